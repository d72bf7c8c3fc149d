"""Atomic writes under failure (full disk, umask), output-folder checks, stale temporaries and the cached sha256."""
import errno
import hashlib
import logging
import os
import stat

import pytest
import torch

from libs import io as lio
from libs.checkpoint import atomic_save
from libs.io import (
    OutputError,
    atomic_write,
    ensure_writable_dir,
    file_sha256,
    remove_stale_temporaries,
    setup_logging,
)


@pytest.fixture
def records():
    """Records of the 'cagnet' logger (it does not propagate to the root logger, so caplog alone misses it)."""
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    level = lio.log.level
    lio.log.setLevel(logging.INFO)
    lio.log.addHandler(handler)
    yield seen
    lio.log.removeHandler(handler)
    lio.log.setLevel(level)


class _FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written, as a full disk's do."""

    def __init__(self, handle, room):
        self._handle, self._room = handle, room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)


def test_a_full_disk_during_torch_save_is_a_clear_error_that_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "00000002.pth"
    atomic_save({"iteration": 1, "state_dict": {"w": torch.ones(3)}}, str(path))
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDisk(real_fdopen(fd, *a, **k), room=300))
    with pytest.raises(OutputError) as err:
        atomic_save({"iteration": 2, "state_dict": {"w": torch.zeros(100000)}}, str(path))
    # torch.save alone would say "RuntimeError: [enforce fail at inline_container.cc:...] unexpected pos ..."
    text = str(err.value)
    assert str(path) in text and "No space left on device" in text and "disk or quota is full" in text
    assert "previous file (if any) is intact" in text and err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["00000002.pth"]          # no temporary file left


def test_a_failing_text_write_and_fsync_are_output_errors(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError, match=r"could not write .*configs.yaml: Disk quota exceeded \(the disk"):
        atomic_write(str(tmp_path / "configs.yaml"), lambda f: f.write("a: 1\n"), binary=False)
    assert os.listdir(tmp_path) == []


def test_other_errors_of_the_writer_pass_through_unchanged(tmp_path):
    def broken(handle):
        raise KeyError("not a disk problem")
    with pytest.raises(KeyError):
        atomic_write(str(tmp_path / "x.bin"), broken)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_files_honour_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write(str(tmp_path / "a.pth"), lambda f: f.write(b"x"))
        assert lio.current_umask() == mask
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.pth").st_mode) == 0o666 & ~mask


def test_output_folder_that_is_a_file_is_named(tmp_path):
    blocker = tmp_path / "Results"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(OutputError, match=f"output folder {blocker} is a file, not a folder"):
        ensure_writable_dir(str(blocker))
    with pytest.raises(OutputError, match=f"{blocker / 'voc12' / '0'} cannot be created: {blocker} is a file"):
        ensure_writable_dir(str(blocker / "voc12" / "0"))
    with pytest.raises(OutputError, match="the log file's folder .* cannot be created"):
        setup_logging(str(blocker / "voc12" / "logs.txt"))
    assert blocker.read_text().startswith("a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (tests/test_bad_files.py runs "
                                              "this case as another user)")
def test_read_only_output_folder_is_named(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=f"{folder / 'models'} is not writable: Permission denied"):
            ensure_writable_dir(str(folder / "models"))
    finally:
        folder.chmod(0o755)


def test_writable_folder_is_created_and_left_clean(tmp_path):
    ensure_writable_dir(str(tmp_path / "a" / "b"))
    assert os.listdir(tmp_path / "a" / "b") == []


def test_stale_temporaries_are_removed_and_logged(tmp_path, records):
    (tmp_path / ".tmp-k3j2h1.pth").write_bytes(b"\0" * 2048)
    (tmp_path / ".tmp-zz.yaml").write_text("half")
    (tmp_path / "00000002.pth").write_bytes(b"keep")
    (tmp_path / "notes.tmp-x").write_text("keep")
    removed = remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [".tmp-k3j2h1.pth", ".tmp-zz.yaml"]
    assert sorted(os.listdir(tmp_path)) == ["00000002.pth", "notes.tmp-x"]
    messages = [r.getMessage() for r in records]
    assert any(".tmp-k3j2h1.pth (0.0 MB), left by an interrupted save" in m for m in messages)
    assert remove_stale_temporaries(str(tmp_path / "missing")) == []


def test_file_sha256_matches_hashlib_and_is_computed_once_per_version(tmp_path, monkeypatch):
    path = tmp_path / "init.pth"
    path.write_bytes(b"abc" * 1000)
    expected = hashlib.sha256(b"abc" * 1000).hexdigest()
    changed = hashlib.sha256(b"abd" * 1000).hexdigest()
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert file_sha256(str(path)) == expected
    assert file_sha256(str(path)) == expected and len(calls) == 1      # cached
    path.write_bytes(b"abd" * 1000)                                    # same size, new content and mtime
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    assert file_sha256(str(path)) == changed and len(calls) == 2
