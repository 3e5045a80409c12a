"""Files written whole or not at all, with the permissions the user's umask gives.

>>> with atomic_open(run_dir / "notes.txt") as f:
...     f.write("...")
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    return 0o777 & ~_umask()


@contextmanager
def atomic_open(path, mode: str = "w"):
    """Open a temporary file beside ``path`` for writing; once the block ends without error it is
    renamed to ``path``, otherwise removed. So ``path`` is always whole or untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp makes it private
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a failed write names no file: say which (a full disk, say)
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all; see :func:`atomic_open`."""
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def write_json(path, obj) -> None:
    """Write JSON whole or not at all; see :func:`atomic_open`."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False, ensure_ascii=False)
        f.write("\n")


def link_or_copy(src, dst):
    """Hard-link ``src`` to ``dst``, or copy it where the file system cannot."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
