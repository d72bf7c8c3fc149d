"""python -m libs.config check configs/*.yaml [--schedule S] | write-reference [docs/config_reference.md]"""
import argparse
import sys

from libs.config.reference import write_config_reference
from libs.config.schedule_keys import check_schedule_keys
from libs.config.validate import load_config
from libs.engine.schedules import SCHEDULE_NAMES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m libs.config",
                                     description="Validate configs or write the key reference.")
    commands = parser.add_subparsers(dest="command", required=True)
    ref = commands.add_parser("write-reference", help="write the markdown key reference")
    ref.add_argument("path", nargs="?", default="docs/config_reference.md")
    check = commands.add_parser("check", help="validate config files (optionally for a --schedule)")
    check.add_argument("configs", nargs="+")
    check.add_argument("--schedule", choices=SCHEDULE_NAMES)
    args = parser.parse_args(argv)
    if args.command == "write-reference":
        write_config_reference(args.path)
        return 0
    status = 0
    for path in args.configs:
        try:
            cfg = load_config(path)
            if args.schedule:
                check_schedule_keys(cfg, args.schedule)
        except ValueError as err:
            print(f"FAIL {err}", file=sys.stderr)
            status = 1
        else:
            print(f"ok   {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())

