"""Scratch folders that say whether their maker is alive, so a crash's are collected.

A job's work folder (gigabytes of data, checkpoints, an export), a model import's upload
and a publish's archive live in folders under the system's temporary directory. A process
killed with -9 never removes them. Each is made here: its maker holds an exclusive flock
on a lock file inside it for the folder's life, and the kernel lets go of that lock when
the process ends, however it ends. So a folder whose lock anyone can take is a dead
process's, and collect() removes it; one whose lock is held is left alone, however old.
"""

import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("cloze.scratch")

PREFIX = "cloze-"
LOCK = ".cloze-lock"
# A folder with no lock file (made by an earlier release, or by a process that died in the
# microseconds between making the folder and locking it) is removed only once nothing in
# it changed for this long: a long job of an earlier release may still be using it.
UNLOCKED_GRACE_S = 24 * 3600.0


@contextmanager
def scratch_dir(prefix: str, root: str | None = None) -> Iterator[Path]:
    """A new folder, PREFIX + prefix + random, removed on exit; locked while it exists."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX + prefix, dir=root))
    # Locked before it gets its name: collect() never sees the lock file unlocked.
    fd, made = tempfile.mkstemp(prefix=".lock-", dir=path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(made, path / LOCK)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def _newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for entry in path.rglob("*"):
        try:
            newest = max(newest, entry.lstat().st_mtime)
        except OSError:  # removed meanwhile
            continue
    return newest


def _dead(path: Path, now: float) -> bool:
    """Whether the folder's maker is gone (its lock is free), or, unlocked, it has not
    changed for UNLOCKED_GRACE_S."""
    lock = path / LOCK
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return now - _newest_mtime(path) > UNLOCKED_GRACE_S
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its maker lives
    finally:
        os.close(fd)  # the lock goes with it; a dead maker's folder is not reused
    return True


def collect(root: str | None = None) -> list[str]:
    """Remove the scratch folders under root (the temporary directory) whose makers died;
    the paths removed."""
    base = Path(root or tempfile.gettempdir())
    removed: list[str] = []
    now = time.time()
    for path in base.glob(PREFIX + "*"):
        try:
            if path.is_dir() and not path.is_symlink() and _dead(path, now):
                shutil.rmtree(path)
                removed.append(str(path))
        except OSError as exc:  # another collector got there first, or no permission
            log.debug("scratch folder %s not collected: %s", path, exc)
    return removed
