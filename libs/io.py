"""Input/output every part shares: atomic file writes and the one logger ("cagnet").

Atomic writes: a crash or a full disk never leaves a half-written checkpoint or config behind. The logger:
console lines that do not break tqdm bars, plus the run's plain-text log file; nothing below train.py prints
except through it.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import IO, Callable

from tqdm import tqdm

log = logging.getLogger("cagnet")


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call write(handle) on a temporary file in the target folder, fsync it, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class _TqdmHandler(logging.Handler):
    """Console lines through tqdm.write: information on stdout, warnings and errors on stderr."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)
        except Exception:  # logging must never crash training
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
