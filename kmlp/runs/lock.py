"""One kmlp process at a time writes a folder: an OS file lock on a hidden file beside it."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from kmlp.errors import RunError
from kmlp.runs.folders import beside, check_lock_file, check_writable
from kmlp.utils.atomic import new_file_mode
from kmlp.utils.jsonfile import parse_json


class RunLock:
    """Only one kmlp process at a time writes a run (training, evaluating, exporting) or another output
    folder: an exclusive ``flock`` on a hidden file beside it, which the operating system releases when
    the process ends, however it ends, so a lock left by a dead process is taken over.

    >>> with RunLock("saved_models/default"):
    ...     ...  # a second process gets RunError naming this one's pid and command

    The lock file appears whole, already locked and naming its holder (it is written under a private
    name and hard-linked into place), so a file there that does not read as a kmlp lock is a user's
    and is refused, never overwritten or deleted; nor is a symbolic link ever followed. ``worker``
    names a multi-worker training's worker other than the chief: it locks its own file (:func:`beside`).
    """

    def __init__(self, out_dir, worker: str | None = None):
        self.out_dir = Path(os.path.abspath(out_dir))
        self.path = beside(out_dir, "lock", worker)
        self._fd = None

    def __enter__(self) -> "RunLock":
        check_writable(self.path.parent)
        while self._fd is None:
            check_lock_file(self.path)
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                self._fd = self._create()  # None: another process made one meanwhile; look again
                continue
            holder = _other_holder(fd)
            if holder is not None:
                os.close(fd)
                raise _in_use(self.out_dir, holder)
            if self._is_at_path(fd):  # a dead process's lock, ours to remove while we hold it
                os.unlink(self.path)
            os.close(fd)
        return self

    def _create(self) -> int | None:
        """A new lock file, locked and naming this process; None if one appeared at the path."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f"{self.path.name}.", suffix=".tmp")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv),
                                     "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode())
            os.fchmod(fd, new_file_mode())
            os.link(tmp, self.path)  # fails if anything, a symbolic link included, is there
        except FileExistsError:
            os.close(fd)
            return None
        except OSError as e:
            os.close(fd)
            raise RunError(f"{self.path.parent}: cannot write there ({e.strerror or e})") from None
        finally:
            os.unlink(tmp)
        return fd

    def _is_at_path(self, fd: int) -> bool:
        try:
            return os.lstat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc) -> None:
        try:
            if self._is_at_path(self._fd):
                os.unlink(self.path)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def check_free(out_dir, worker: str | None = None) -> None:
    """Refuse at once, as :class:`RunLock` would, a folder another kmlp process holds: for a command
    that takes the lock only after loading TensorFlow. Nothing is created or changed."""
    try:
        fd = os.open(beside(out_dir, "lock", worker), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # none there, or not a lock: RunLock says which when it is taken
        return
    try:
        holder = _other_holder(fd)
    finally:
        os.close(fd)  # (which releases the lock, if it was taken here)
    if holder is not None:
        raise _in_use(Path(os.path.abspath(out_dir)), holder)


def _other_holder(fd: int) -> str | None:
    """Lock the open lock file ``fd`` without waiting; if another process holds it, who that is."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        try:
            info = parse_json(os.read(fd, 4096), "lock")
            return f"pid {info['pid']}, since {info['since']}: {info['command']}"
        except (ValueError, KeyError):
            return "pid unknown"


def _in_use(out_dir: Path, holder: str) -> RunError:
    return RunError(f"{out_dir}: in use by another kmlp process ({holder}); wait for it to end, or choose "
                    f"another folder")
