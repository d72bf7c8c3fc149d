"""Thin command-line tools, run as `python -m tools.<name>`."""
import sys


def run_cli(main) -> None:
    """Exit with main()'s status; a ValueError or a missing file (bad input) prints one `error:` line and exits 2."""
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
