"""Build or verify a split list (`train_list.npy` / `test_list.npy`).

The CaGNet release lacks `dataset/cocostuff/split/train_list.npy`; make it from the COCO-Stuff 164k annotations:

    python -m tools.make_split_list --annotations dataset/cocostuff/annotations --subdir train2017 \
        --out dataset/cocostuff/split/train_list.npy

Entries are `<annotations>/<subdir>/<stem>.png`, sorted; an annotation is listed only if its image
`images/<subdir>/<stem>.jpg` exists beside the annotations folder (or under --images). Check a list:

    python -m tools.make_split_list --verify dataset/voc12/split/train_list.npy --root dataset/voc12

which prints every entry whose image or annotation is missing, whose header does not decode or whose annotation
is not single-channel or not its image's size, and exits with status 1 if there is any. `--deep` also decodes every
pixel (a truncated JPEG or PNG is an error naming the file) and checks that the annotation's values are rows of
`<root>/labels_refined.txt` or 255 (void); about 1 ms per pair for the header check, a full decode for --deep.
"""
import argparse
import os
import sys

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.split_lists import build_split_list, save_split_list, verify_split_list


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--annotations', help='annotations folder holding <subdir>/<stem>.png (build mode)')
    parser.add_argument('--subdir', help='subfolder to list, e.g. train2017, val2017, train, val (build mode)')
    parser.add_argument('--images', default=None,
                        help='images folder holding <subdir>/<stem>.jpg; default: "images" beside --annotations')
    parser.add_argument('--out', help='output .npy path (build mode)')
    parser.add_argument('--verify', metavar='LIST', help='verify this list instead of building one')
    parser.add_argument('--root', help='dataset root with images/ and annotations/ (verify mode)')
    parser.add_argument('--deep', action='store_true',
                        help='verify mode: decode every pixel and check the label values against labels_refined.txt')
    parser.add_argument('--max-report', type=int, default=20, help='problems printed in verify mode')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.verify:
        if not args.root:
            print('error: --verify needs --root (the folder holding images/ and annotations/)', file=sys.stderr)
            return 2
        problems = verify_split_list(args.verify, args.root, deep=args.deep)
        for line in problems[:args.max_report]:
            print(line)
        if len(problems) > args.max_report:
            print(f"... and {len(problems) - args.max_report} more")
        missing = sum(p.endswith(' is missing') for p in problems)
        print(f"{args.verify}: {missing} missing file(s), {len(problems) - missing} other problem(s) under "
              f"{args.root}{' (deep check)' if args.deep else ''}")
        return 1 if problems else 0
    missing = [flag for flag, value in (('--annotations', args.annotations), ('--subdir', args.subdir),
                                        ('--out', args.out)) if not value]
    if missing:
        print(f"error: building a list needs {', '.join(missing)} (or use --verify LIST --root ROOT)",
              file=sys.stderr)
        return 2
    entries, without_image = build_split_list(args.annotations, args.subdir, args.images)
    if without_image:
        shown = ', '.join(without_image[:5]) + (' ...' if len(without_image) > 5 else '')
        print(f"warning: {len(without_image)} annotation(s) in {os.path.join(args.annotations, args.subdir)} "
              f"have no image and were left out: {shown}", file=sys.stderr)
    if not entries:
        print(f"error: no annotation in {os.path.join(args.annotations, args.subdir)} has an image; nothing written",
              file=sys.stderr)
        return 1
    save_split_list(entries, args.out)
    print(f"wrote {len(entries)} entries to {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
