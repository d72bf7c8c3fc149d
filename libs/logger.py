"""The one logger ("cagnet"): console lines that do not break tqdm bars, plus the run's log file."""
from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm


class _TqdmHandler(logging.Handler):
    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001 - logging must never crash training
            self.handleError(record)


def setup_logging(log_file: str | None, quiet: bool = False) -> logging.Logger:
    """Console (INFO; WARNING when quiet) and, when given, an appended plain-text log file (the original's
    logs*.txt)."""
    logger = logging.getLogger("cagnet")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = _TqdmHandler()
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="a")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)
    logger.propagate = False
    return logger


def progress_bar(description: str, leave: bool = True):
    """A factory for tqdm bars (iterables or totals); bars go to stderr, so logs on stdout stay clean."""
    def make(iterable=None, total=None, initial=0):
        return tqdm(iterable, total=total, initial=initial, desc=description, leave=leave, dynamic_ncols=True,
                    mininterval=1.0, disable=None)
    return make
