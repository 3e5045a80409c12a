"""Where kmlp may write: output folders checked before any work, results published whole.

kmlp deletes or replaces only what it can prove it wrote (:mod:`kmlp.runs.manifest`): an output
folder is new, empty, or a result of the same kind whose manifest lists everything in it. A result
is written into a hidden folder beside its place (``.DIR.partial-*``) and swapped into place in one
step, so a reader sees the old result or the new one, never half of one. Beside a run, its lock
(:mod:`kmlp.runs.lock`) and the backup of a training in progress are known by their contents,
never by their names alone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path

from kmlp.errors import RunError
from kmlp.runs import manifest
from kmlp.runs.rundir import BACKUP_IDENTITY_FILE, KEPT_ON_RETRAINING
from kmlp.utils.atomic import new_dir_mode
from kmlp.utils.jsonfile import check_utf8_path, read_json


def check_out_dir(out_dir, kind: str = "run", worker: str | None = None) -> Path:
    """Refuse, before any work, an output folder kmlp may not write: a file, the current folder or one
    holding it, a symbolic link, a folder holding anything its manifest does not list (at any depth,
    see :mod:`kmlp.runs.manifest`), or a lock or backup beside it that kmlp did not write.

    ``out_dir`` may be new, empty, or hold ``kind`` (a key of :data:`kmlp.runs.manifest.KINDS`) written by
    kmlp. Its parent must be writable, and its name UTF-8. Returns the folder as an absolute path.
    """
    path = Path(os.path.abspath(out_dir))
    check_utf8_path(path, "--out", RunError)  # before any work: TensorFlow writes there by name
    if path.is_symlink():
        raise RunError(f"{out_dir}: is a symbolic link; give the folder it points to ({path.resolve()})")
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise RunError(f"{out_dir}: is the current folder or holds it; give a folder of its own, "
                       f"e.g. {Path(out_dir) / 'run'}")
    if path.exists() and not path.is_dir():
        raise RunError(f"{out_dir}: is a file; kmlp writes {manifest.KINDS[kind]} into a folder of its own")
    if path.is_dir() and os.listdir(path):
        manifest.check_owned(path, kind)
    check_lock_file(beside(path, "lock", worker))
    if kind == "run":
        check_backup_dir(beside(path, "backup", worker))
    check_writable(path.parent)
    return path


def check_writable(folder) -> Path:
    """Create ``folder`` if needed and check that files can be created in it (RunError if not)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".kmlp-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunError(f"{folder}: cannot write there ({e.strerror or e})") from None
    return folder


def beside(out_dir, what: str, worker: str | None = None) -> Path:
    """A hidden path beside ``out_dir`` for ``what`` (``lock``, ``backup``): ``.DIR.lock`` for the
    process that writes the run, ``.DIR.worker-1.lock`` for a multi-worker training's ``worker``
    other than the chief (see :mod:`kmlp.training.cluster`), so that workers sharing a folder never collide."""
    out_dir = Path(os.path.abspath(out_dir))
    return out_dir.parent / ".".join(["", out_dir.name, *([worker] if worker else []), what])


def _read_small_json(path: Path, limit: int = 1 << 20):
    """The JSON in ``path``, read without following a symbolic link and at most ``limit`` bytes; None if
    it is anything else (a link, a folder, too large, not JSON)."""
    try:
        return read_json(path, expect=None, limit=limit, follow_symlinks=False)
    except ValueError:
        return None


def is_backup_dir(path) -> bool:
    """Whether ``path`` is a backup kmlp made: a real folder whose identity file (see
    :mod:`kmlp.training.backup`) says which training it belongs to."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    identity = _read_small_json(path / BACKUP_IDENTITY_FILE)
    return isinstance(identity, dict) and "config" in identity and "plan" in identity


def check_backup_dir(path) -> None:
    """Refuse a file or folder where kmlp keeps a training's backup that is not a kmlp backup."""
    if os.path.lexists(path) and not is_backup_dir(path):
        raise RunError(f"{path}: kmlp keeps the backup of a training there, but this is not a kmlp "
                       f"backup; move it, or choose another --out")


def _is_lock_text(text) -> bool:
    return isinstance(text, dict) and {"pid", "command", "since"} <= set(text)


def check_lock_file(path) -> None:
    """Refuse a file (or link) where kmlp keeps a folder's lock that is not a kmlp lock."""
    if os.path.lexists(path) and not _is_lock_text(_read_small_json(path, 4096)):
        raise RunError(f"{path}: kmlp keeps its lock there, but this is not a kmlp lock; move it, "
                       f"or choose another folder")


def staging_dir(out_dir: Path) -> Path:
    """A fresh, hidden folder beside ``out_dir`` to write a run into before it is moved into place."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    os.chmod(path, new_dir_mode())  # mkdtemp makes it private; a run is as readable as any new folder
    return path


def publish(staging: Path, out_dir: Path, kind: str = "run") -> Path | None:
    """Move a completely written result of ``kind`` from ``staging`` into place, replacing an earlier
    one at ``out_dir`` (which :func:`check_out_dir` accepted). Returns None, or the folder holding
    what was left of the earlier one (see below).

    The manifest is written last (:mod:`kmlp.runs.manifest`). What outlives replacing (a run's exported
    versions, :data:`KEPT_ON_RETRAINING`) is hard-linked into the new result first; then the two folders are
    exchanged in one step, so a reader (or a server watching ``out_dir/export``) sees the old result
    or the new one, never neither. Of the old one, only what its manifest lists is then deleted:
    anything a user put there meanwhile is kept. ``staging`` is removed if anything fails before.
    """
    staging, out_dir = Path(staging), Path(out_dir)
    try:
        if not out_dir.exists():
            manifest.write(staging, kind)
            os.rename(staging, out_dir)
            return None
        manifest.link_listed(out_dir, staging, KEPT_ON_RETRAINING if kind == "run" else ())
        manifest.write(staging, kind)
        _exchange(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging if manifest.remove_owned(staging) else None  # staging holds the old result now


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux's ``renameat2(RENAME_EXCHANGE)``); where the system or file
    system lacks it, fall back to two renames, with a moment in which ``b`` does not exist."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(b))
    aside = Path(tempfile.mkdtemp(prefix=f".{b.name}.old-", dir=b.parent))
    os.rmdir(aside)
    os.replace(b, aside)
    os.replace(a, b)
    os.replace(aside, a)
