"""Where the names come from by default: ``data/names.txt``, fetched from its public address (or
taken from a verified copy beside the project) when it is missing, and kept only if its SHA-256 is
the expected one."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from kmlp.errors import DataError

NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"


NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"


PROJECT_ROOT = Path(__file__).resolve().parents[2]


DEFAULT_DATA = PROJECT_ROOT / "data" / "names.txt"


def resolve_data_path(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Where to read names from: ``path`` if given, else ``data/names.txt``.

    When the default file is missing it is fetched from the public address and kept in ``data/``
    only if its SHA-256 matches; a copy beside the project (``../shared/data/names.txt``, verified the
    same way) is used instead of the network when there is one.
    """
    if path is not None:
        return Path(path)
    if DEFAULT_DATA.exists():
        return DEFAULT_DATA
    beside = PROJECT_ROOT.parent / "shared" / "data" / "names.txt"
    if beside.exists() and file_sha256(beside) == NAMES_SHA256:
        return beside
    if not download:
        raise DataError(f"{DEFAULT_DATA}: no such file")
    return download_names(DEFAULT_DATA)


def download_names(dest: Path = DEFAULT_DATA, url: str = NAMES_URL, sha256: str = NAMES_SHA256) -> Path:
    """Download names.txt to ``dest``, verify its SHA-256, and only then move it into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} -> {dest}")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"{dest}: missing and could not be downloaded ({reason}); "
            f"download {url} to {dest} yourself, or pass --data PATH"
        ) from None
    digest = hashlib.sha256(body).hexdigest()
    if digest != sha256:
        raise DataError(f"{url}: SHA-256 {digest} does not match the expected {sha256}; not saved")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".names-", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    os.replace(tmp, dest)
    return dest


def file_sha256(path) -> str:
    """The SHA-256 of a file, read in pieces (names files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
