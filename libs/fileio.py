"""Atomic file writing: a crash or a full disk never leaves a half-written checkpoint or config behind."""
import os
import tempfile
from typing import Callable, IO


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
