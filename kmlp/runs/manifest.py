"""What kmlp wrote into a folder, so that it replaces or deletes only that.

A folder kmlp writes as a whole (a run, a range test's results, a search's results) carries
``kmlp-manifest.json``, written last and atomically:

    {"kmlp_manifest": 1, "kind": "run",
     "entries": {"logs/": {}, "logs/train/events.out.tfevents.1": {"size": 1830, "sha256": "..."}, ...}}

Folders end in ``/``; every file has its size and SHA-256. A command that would delete or replace
files in an existing folder first checks that everything in it, at any depth, is listed with the
same size and hash (:func:`check_owned`); anything else is the user's, and the command refuses.
Removing an earlier result (:func:`remove_owned`) deletes only listed files whose contents still
match, and folders that are then empty. Nothing here follows a symbolic link: one where kmlp expects
its own file or folder is never its own.

>>> write(staging, "run")            # after everything else is written
>>> check_owned(out_dir, "run")      # before any work that would replace out_dir
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from kmlp.errors import NotOwned
from kmlp.utils.atomic import link_or_copy, write_json

MANIFEST_FILE = "kmlp-manifest.json"
FORMAT = 1
MAX_MANIFEST_BYTES = 64 << 20  # a run with thousands of exported versions stays far below


# The kinds of folder kmlp writes as a whole, as a message names them.
KINDS = {"run": "a kmlp run", "lr_find": "range test results", "tune": "search results"}


def _open_dir(path, dir_fd: int | None = None) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)


def _tree(dir_fd: int, rel: str = ""):
    """Everything below an open folder, parents first, as ``(path, lstat, dir_fd, name)``; folders'
    paths end in ``/``. Symbolic links are yielded, never followed."""
    for name in sorted(os.listdir(dir_fd)):
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            yield rel + name, info, dir_fd, name
            continue
        yield f"{rel}{name}/", info, dir_fd, name
        fd = _open_dir(name, dir_fd)
        try:
            yield from _tree(fd, f"{rel}{name}/")
        finally:
            os.close(fd)


def _file_record(dir_fd: int, name: str) -> dict:
    """Size and SHA-256 of a regular file, opened without following a symbolic link."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        return {"size": os.fstat(fd).st_size, "sha256": digest.hexdigest()}
    finally:
        os.close(fd)


def read_bounded(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes from an open file: a read never grows without bound."""
    chunks, size = [], 0
    while size < limit and (chunk := os.read(fd, min(1 << 20, limit - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def scan(folder, only=None) -> dict:
    """The entries of everything in ``folder`` but its manifest (or of its top-level entries named in
    ``only``), as a manifest lists them.

    Raises :class:`NotOwned` at a symbolic link or anything but files and folders: kmlp writes none."""
    entries = {}
    root = _open_dir(folder)
    try:
        for path, info, dir_fd, name in _tree(root):
            if path == MANIFEST_FILE or (only is not None and path.split("/")[0] not in only):
                continue
            if stat.S_ISDIR(info.st_mode):
                entries[path] = {}
            elif stat.S_ISREG(info.st_mode):
                entries[path] = _file_record(dir_fd, name)
            else:
                raise NotOwned(f"{Path(folder) / path}: is not a regular file or folder")
    finally:
        os.close(root)
    return entries


def write(folder, kind: str, entries: dict | None = None) -> dict:
    """Write ``folder``'s manifest of ``kind`` (default entries: everything in it now); returns them."""
    entries = scan(folder) if entries is None else entries
    write_json(Path(folder) / MANIFEST_FILE, {"kmlp_manifest": FORMAT, "kind": kind, "entries": entries})
    return entries


def read(folder) -> tuple[str, dict] | None:
    """``(kind, entries)`` of ``folder``'s manifest; None if it has none. :class:`NotOwned` if the file
    there is not a kmlp manifest (a symbolic link, too large, or other contents)."""
    path = Path(folder) / MANIFEST_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise NotOwned(f"{path}: not a kmlp manifest ({e.strerror or e})") from None
    try:
        text = read_bounded(fd, MAX_MANIFEST_BYTES + 1)
    finally:
        os.close(fd)
    try:
        manifest = json.loads(text) if len(text) <= MAX_MANIFEST_BYTES else None
    except (ValueError, RecursionError):
        manifest = None
    if not (isinstance(manifest, dict) and manifest.get("kmlp_manifest") == FORMAT
            and isinstance(manifest.get("kind"), str) and isinstance(manifest.get("entries"), dict)):
        raise NotOwned(f"{path}: not a kmlp manifest")
    return manifest["kind"], manifest["entries"]


def _judge(folder, entries: dict):
    """``(path, is_folder, owned, dir_fd, name)`` for everything in ``folder`` but its manifest, parents
    first; owned: listed in ``entries`` and, for a file, still of the listed size and hash."""
    root = _open_dir(folder)
    try:
        for path, info, dir_fd, name in _tree(root):
            if path == MANIFEST_FILE:
                continue
            if stat.S_ISDIR(info.st_mode):
                yield path, True, path in entries, dir_fd, name
            else:
                owned = stat.S_ISREG(info.st_mode) and _matches(entries.get(path), info, dir_fd, name)
                yield path, False, owned, dir_fd, name
    finally:
        os.close(root)


def first_foreign(folder, entries: dict) -> str | None:
    """The first path in ``folder`` (relative) that ``entries`` do not vouch for, or None."""
    return next((path for path, _, owned, _, _ in _judge(folder, entries) if not owned), None)


def _matches(record, info: os.stat_result, dir_fd: int, name: str) -> bool:
    if not isinstance(record, dict) or record.get("size") != info.st_size:
        return False
    return _file_record(dir_fd, name) == record


def check_owned(folder, kind: str) -> None:
    """Raise :class:`NotOwned` unless everything in the existing, non-empty ``folder`` is listed in
    its manifest of ``kind`` (one of :data:`KINDS`)."""
    folder, what = Path(folder), KINDS[kind]
    try:
        manifest = read(folder)
        if manifest is None:
            raise NotOwned(f"{folder}/{sorted(os.listdir(folder))[0]}: kmlp did not write this ({folder} has "
                           f"no {MANIFEST_FILE}); kmlp replaces only {what} of its own: move it, or choose "
                           f"another folder")
        if manifest[0] != kind:
            raise NotOwned(f"{folder}: holds {KINDS.get(manifest[0], manifest[0])}, not {what}; "
                           f"choose another folder")
        foreign = first_foreign(folder, manifest[1])
    except OSError as e:
        raise NotOwned(f"{e.filename or folder}: cannot be read ({e.strerror or e})") from None
    if foreign:
        raise NotOwned(f"{folder}/{foreign}: kmlp did not write this (or it changed since); kmlp replaces "
                       f"only {what} of its own: move it, or choose another folder")


def remove_owned(folder) -> list[str]:
    """Delete what ``folder``'s manifest lists and still matches, then the manifest, then the folders
    left empty; returns the paths kept (anything else, now the user's alone). A folder without a
    manifest is left whole."""
    folder = Path(folder)
    try:
        manifest = read(folder)
    except NotOwned:
        manifest = None
    if manifest is None:
        names = sorted(os.listdir(folder))
        if not names:
            folder.rmdir()
        return names
    kept, folders = [], []
    for path, is_folder, owned, dir_fd, name in _judge(folder, manifest[1]):
        if not owned:
            kept.append(path)
        elif is_folder:
            folders.append(path)
        else:
            os.unlink(name, dir_fd=dir_fd)
    (folder / MANIFEST_FILE).unlink()  # what it lists is gone; the rest is the user's
    for path in reversed(folders):  # children first; rmdir removes only empty folders
        try:
            os.rmdir(folder / path)
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass
    return kept


def link_listed(old, new, tops) -> None:
    """Hard-link (or copy) into ``new`` what ``old``'s manifest lists under the top-level entries
    ``tops`` and still matches, e.g. a run's exported versions, which outlive training it again."""
    manifest = read(old)
    if manifest is None:
        return
    for path, is_folder, owned, _, _ in _judge(old, manifest[1]):
        if not owned or path.split("/")[0] not in tops:
            continue
        if is_folder:
            (Path(new) / path).mkdir()
        else:
            link_or_copy(Path(old) / path, Path(new) / path)


def add(folder, entries: dict) -> None:
    """Add ``entries`` (paths relative to ``folder``) to its manifest, for what a command adds to an
    existing result (an exported version, an evaluation). A folder without a manifest gets none:
    kmlp cannot vouch for the rest of it."""
    manifest = read(folder)
    if manifest is not None:
        write(folder, manifest[0], {**manifest[1], **entries})


def entries_of(folder, under: str) -> dict:
    """What :func:`scan` finds in ``folder``, each path prefixed with ``under`` (and ``under``'s own
    folders), e.g. a version being exported into ``export/3/``."""
    parts = under.strip("/").split("/")
    parents = {"/".join(parts[:i]) + "/": {} for i in range(1, len(parts) + 1)}
    return {**parents, **{f"{under.rstrip('/')}/{path}": record for path, record in scan(folder).items()}}


def record_files(folder, *names: str) -> None:
    """Record the current contents of files kmlp has just rewritten in ``folder`` (e.g. metrics.json)."""
    manifest = read(folder)
    if manifest is None:
        return
    root = _open_dir(folder)
    try:
        update = {name: _file_record(root, name) for name in names}
    finally:
        os.close(root)
    write(folder, manifest[0], {**manifest[1], **update})
