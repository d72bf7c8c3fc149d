"""Export one of our checkpoints to the exact layout of the authors' release ({'iteration', 'state_dict'}).

    python -m tools.export_checkpoint Results/voc12/0/models_transfer/00006000.pth voc12_ours.pth
"""
import argparse
import os
import sys

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.checkpoint import TRUST_FLAG, atomic_save, export_original, read_checkpoint
from libs.io import OutputError, setup_logging


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="one of our snapshots (Results/<dataset>/<id>/models*/NNNNNNNN.pth)")
    parser.add_argument("output", help="where to write the original-layout file")
    parser.add_argument("--iteration", type=int, default=None, help="override the stored iteration number")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="also read a checkpoint that needs full unpickling (which can run arbitrary code): "
                             "only for a file from a source you trust")
    args = parser.parse_args(argv)
    if os.path.abspath(args.checkpoint) == os.path.abspath(args.output):
        parser.error("output must differ from the input: exporting never overwrites a checkpoint")
    setup_logging(None)     # the input's sha256 reaches the console
    exported = export_original(read_checkpoint(args.checkpoint, trust=args.trust_checkpoint), args.iteration)
    atomic_save(exported, args.output)
    print(f"wrote {args.output}: iteration {exported['iteration']}, {len(exported['state_dict'])} tensors")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
