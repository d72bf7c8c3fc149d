"""Input/output every part shares: atomic file writes, output folders, file checksums and the one logger
("cagnet").

Atomic writes: a crash or a full disk never leaves a half-written checkpoint or config behind, and a failed write
is an `OutputError` naming the file. The logger: console lines that do not break tqdm bars, plus the run's
plain-text log file; nothing below train.py prints except through it.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import sys
import tempfile
from typing import IO, Callable, Dict, List, Tuple

from tqdm import tqdm

log = logging.getLogger("cagnet")


# Temporary files of atomic_write start with this; a save killed half-way leaves one behind.
TMP_PREFIX = ".tmp-"
# Errors that mean "no space": their message says so.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class OutputError(OSError):
    """A file or folder the run must write could not be written; the message names it and says why."""

    def __init__(self, code: int | None, message: str):
        super().__init__(message)
        self.errno = code


def _write_failure(path: str, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_SPACE:
        reason += " (the disk or quota is full: free space, or point save_path to another disk)"
    return OutputError(exc.errno, f"could not write {path}: {reason}. Nothing was replaced: the previous file "
                                  f"(if any) is intact and no temporary file is left")


def current_umask() -> int:
    """The process's umask (read without changing it where /proc says it)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _RecordingFile:
    """A binary file proxy that remembers the OSError of a failed write: torch.save turns it into a bare
    RuntimeError ('enforce fail at inline_container.cc'), which would hide a full disk."""

    def __init__(self, handle):
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data):
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name):
        return getattr(self._handle, name)


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call write(handle) on a temporary file in the target folder, fsync it, then rename it over `path`.

    The file gets the permissions of a plain open() (0666 less the umask; mkstemp alone would give 0600, which
    colleagues on a shared cluster cannot read). A failed write (full disk, read-only folder) is an OutputError
    naming `path`; the temporary file is removed and an existing `path` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1], dir=folder)
    except OSError as exc:
        raise _write_failure(path, exc) from exc
    proxy = None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            proxy = _RecordingFile(handle) if binary else handle
            write(proxy)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OutputError):
            raise
        if isinstance(exc, OSError):
            raise _write_failure(path, exc) from exc
        recorded = getattr(proxy, "error", None)
        if recorded is not None:
            raise _write_failure(path, recorded) from exc
        raise


def ensure_writable_dir(path: str, what: str = "output folder") -> None:
    """Create `path` if needed and prove it writable by creating and removing a file in it (root ignores
    permission bits, so os.access would say yes on a read-only mount too). Errors name the path and why."""
    path = os.path.abspath(path)
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        where = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise OutputError(errno.ENOTDIR, f"{what} {path} {where}, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".probe", dir=path)
        os.close(fd)
        os.remove(tmp)
    except OSError as exc:
        raise OutputError(exc.errno, f"{what} {path} is not writable: {exc.strerror or exc}") from exc


def remove_stale_temporaries(folder: str) -> List[str]:
    """Delete the temporary files that saves killed half-way (kill -9, power loss) left in `folder`; each is
    logged with its size. Returns the removed paths."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.startswith(TMP_PREFIX) or not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        os.remove(path)
        log.info("removed %s (%.1f MB), left by an interrupted save", path, size / 2 ** 20)
        removed.append(path)
    return removed


_SHA256: Dict[Tuple[str, int, int, int], str] = {}


def file_sha256(path: str) -> str:
    """The file's sha256 (hex). Cached by path, inode, size and modification time, so an 800 MB checkpoint
    that several parts of a run look at is hashed once."""
    info = os.stat(path)
    key = (os.path.realpath(path), info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


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
        ensure_writable_dir(os.path.dirname(os.path.abspath(log_file)), "the log file's folder")
        try:
            file_handler = logging.FileHandler(log_file, mode="a")
        except OSError as exc:
            raise OutputError(exc.errno, f"cannot open the log file {log_file}: {exc.strerror or exc}") from exc
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
