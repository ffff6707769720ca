"""Atomic writes, one implementation for every writer in vidiff (weights, configs, videos, checkpoints).

Bytes go to a temporary entry next to the destination, are flushed, and the entry is renamed onto the
destination (``os.replace``), so a crash or an error leaves either the old output or the new one, never
half of one. A folder that already exists is first moved aside and removed only once the new one is in
place.

Temporary entries are named recognisably, ``.<destination name>.vidiff-tmp-<pid>-<host>-<random>`` (and
``vidiff-old`` for a folder moved aside), so that a process killed between writing and renaming (SIGKILL,
power loss) leaves debris that can be told apart from the user's files: the next write to the same
destination removes the entries whose process, on this host, is no longer running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_file",
    "check_writable",
    "fsync_dir",
    "fsync_path",
    "give_default_mode",
    "is_temp_of",
    "remove_stale_temps",
    "write_json_atomic",
    "write_text_atomic",
]

_KINDS = ("tmp", "old")
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:32] or "host"


def _prefix(dest: Path, kind: str) -> str:
    return f".{dest.name}.vidiff-{kind}-{os.getpid()}-{_HOST}-"


def _owner(dest: Path, entry: str) -> tuple[int, str] | None:
    """``(pid, host)`` of a temporary entry made for ``dest``, or None if ``entry`` is not one."""
    m = re.fullmatch(rf"\.{re.escape(dest.name)}\.vidiff-(?:{'|'.join(_KINDS)})-(\d+)-([A-Za-z0-9._]+)-\w+", entry)
    return (int(m.group(1)), m.group(2)) if m else None


def is_temp_of(dest: str | os.PathLike, entry: str) -> bool:
    """Whether the file name ``entry`` is a temporary entry of a write to ``dest``."""
    return _owner(Path(dest), entry) is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(dest: str | os.PathLike) -> list[Path]:
    """Remove the temporary entries of earlier writes to ``dest`` whose process has died; return them."""
    dest = Path(dest)
    removed = []
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return []
    for entry in entries:
        owner = _owner(dest, entry.name)
        if owner is None or owner[1] != _HOST or _alive(owner[0]):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's content (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fsync_path(path)


def give_default_mode(path: Path) -> None:
    """``mkstemp`` / ``mkdtemp`` create owner-only entries (0600 / 0700); give ``path`` the mode a plain
    ``open`` or ``mkdir`` would (0666 / 0777 less the umask), so outputs renamed into place are shareable."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _replace(new: Path, path: Path) -> None:
    """Rename ``new`` onto ``path``. A file replaces a file in one step; a folder in the way (or a folder
    replacing anything) is moved aside first, put back if the rename fails, removed once it succeeded."""
    backup = None
    if (path.exists() or path.is_symlink()) and (new.is_dir() or (path.is_dir() and not path.is_symlink())):
        backup = Path(tempfile.mkdtemp(prefix=_prefix(path, "old"), dir=path.parent))
        backup.rmdir()
        os.replace(path, backup)
    try:
        os.replace(new, path)
    except BaseException:
        if backup is not None:
            os.replace(backup, path)
        raise
    fsync_dir(path.parent)
    if backup is not None:
        _remove(backup)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``path`` (an empty file); if the block succeeds its content is
    flushed and renamed onto ``path``, otherwise it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, name = tempfile.mkstemp(prefix=_prefix(path, "tmp"), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        give_default_mode(tmp)  # after the write: a writer may have replaced the file
        _replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``path``; if the block succeeds it replaces ``path`` (a file or
    a folder, moved aside first and removed once the new folder is in place), otherwise it is removed and
    ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path, "tmp"), dir=path.parent))
    give_default_mode(tmp)
    try:
        yield tmp
        _replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


def check_writable(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` if an atomic write to it cannot succeed: a name that is a folder
    itself (``.``), a parent that is a file, or a folder this process cannot add entries to (permissions, a
    read-only or full filesystem). A real one-byte file is written, flushed and removed: permission bits do
    not stop root, while a read-only mount or a full disk does."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"{path} names a folder itself, not an output: give the output a new name")
    ancestor = path.parent
    while not (ancestor.exists() or ancestor.is_symlink()):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot write {path}: {ancestor} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=_prefix(path, "tmp"), dir=ancestor)
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as e:
        raise ValueError(f"cannot write {path}: no new file can be written in {ancestor} ({e.strerror})") from None


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented, key-sorted JSON (with a final newline) atomically."""
    write_text_atomic(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)
