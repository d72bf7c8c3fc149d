"""Generate the synthetic zero-shot demo benchmark (demo/data.py) in the real on-disk layout.

    python -m demo.make_data --out dataset/demo --seed 0 --n_train 1200 --n_test 200 --size 64

Skips (with a message) when the folder already holds a complete demo made with the same arguments;
`--force` regenerates. A folder made with other arguments is an error unless `--force` is given.
"""
import argparse
import sys
import time
from pathlib import Path

from demo import data as demo_data


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='dataset/demo', help='output folder (default: dataset/demo)')
    p.add_argument('--seed', type=int, default=0, help='seed of the scenes (default: 0)')
    p.add_argument('--n_train', type=int, default=1200, help='training images (default: 1200)')
    p.add_argument('--n_test', type=int, default=200, help='test images (default: 200)')
    p.add_argument('--size', type=int, default=64, help='image side in pixels (default: 64)')
    p.add_argument('--appearance_seed', type=int, default=0,
                   help='seed of the embedding-to-appearance map (default: 0)')
    p.add_argument('--voc_dir', default=None,
                   help='folder with VOC labels and word vectors (default: dataset/voc12 of this repo)')
    p.add_argument('--force', action='store_true', help='regenerate even if the folder is complete')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    params = dict(seed=args.seed, n_train=args.n_train, n_test=args.n_test, size=args.size,
                  appearance_seed=args.appearance_seed)
    out = Path(args.out)
    if not args.force:
        if demo_data.is_complete(out, **params):
            print(f'{out}: complete demo data already there ({demo_data.generation_record(**params)}); '
                  'skipping (use --force to regenerate)')
            return 0
        record = demo_data.existing_record(out)
        if record is not None and record != demo_data.generation_record(**params):
            raise SystemExit(f'{out}: holds demo data generated with {record}, not with '
                             f'{demo_data.generation_record(**params)}; pass --force to regenerate')
    start = time.perf_counter()
    summary = demo_data.generate_demo(out, voc_dir=args.voc_dir, progress=not args.quiet, **params)
    seconds = time.perf_counter() - start
    print(f'wrote {out}: {args.n_train} train + {args.n_test} test images of {args.size}x{args.size} '
          f'in {seconds:.1f} s')
    print(f'min pairwise appearance distance: {summary["min_appearance_distance"]:.3f} '
          f'({" / ".join(summary["closest_pair"])})')
    counts = summary['pixel_counts']['val']
    names = [n for n in counts if n not in ('background', 'void')]
    width = max(len(n) for n in names)
    print('test pixels per class (val):')
    for name in names:
        print(f'  {name:<{width}} {counts[name]:>7d}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
