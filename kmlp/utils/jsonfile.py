"""Reading the JSON files kmlp reads (a run's config.json, metrics.json and evaluations.json, a
``--config`` file, a backup's run.json, a lock), and checking that a path can be written in one.

Every way a file can fail to be what kmlp expects ends in one error naming the file: missing, not a
regular file (a symbolic link to ``/dev/zero``, a FIFO), too large to be one kmlp wrote, not UTF-8,
not JSON, nested too deeply or holding an integer too long for Python to read, or JSON of another
type than expected.

>>> read_json(run_dir / "metrics.json", error=RunError)      # a dict, or RunError("PATH: why")
"""

from __future__ import annotations

import json
import os
import stat

# kmlp's JSON files are a few kilobytes (evaluations.json grows by one record per evaluation):
# a larger one is not kmlp's, and is refused rather than read into memory.
MAX_JSON_BYTES = 16 << 20

_TYPE_NAMES = {dict: "a JSON object", list: "a JSON array"}


def read_json(path, expect: type = dict, error: type[Exception] = ValueError, limit: int = MAX_JSON_BYTES,
              follow_symlinks: bool = True):
    """The JSON value of the file at ``path``, of type ``expect`` (``dict`` or ``list``; None for any).

    Anything else raises ``error("PATH: why")``, one line; nothing larger than ``limit`` bytes is read.
    ``follow_symlinks=False`` refuses a symbolic link itself (for a file kmlp keeps beside a folder).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)  # a FIFO never blocks
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise error(f"{path}: larger than {limit:,} bytes, so not a file kmlp wrote")
    return parse_json(data, path, expect, error)


def parse_json(data: bytes | str, name, expect: type | None = dict, error: type[Exception] = ValueError):
    """``data`` as JSON of type ``expect``; else ``error("NAME: why")``, one line."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise error(f"{name}: {why_not_json(e)}") from None
    if expect is not None and not isinstance(value, expect):
        raise error(f"{name}: expected {_TYPE_NAMES.get(expect, expect.__name__)}, found {_json_type(value)}")
    return value


def why_not_json(error: ValueError | RecursionError) -> str:
    """What ``json.loads`` refused, in a few words, from the error it raised."""
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 (byte {error.start})"
    if isinstance(error, RecursionError):
        return "not valid JSON (nested too deeply)"
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON ({error})"
    return f"not valid JSON ({str(error).split(';')[0]})"  # Python's bound on an integer's digits


def _json_type(value) -> str:
    for kind, name in ((dict, "an object"), (list, "an array"), (str, "a string"), (bool, "a boolean"),
                       ((int, float), "a number")):
        if isinstance(value, kind):
            return name
    return "null"


def check_utf8_path(path, what: str, error: type[Exception] = ValueError) -> str:
    """``path`` as text, if it is UTF-8; else ``error`` naming ``what`` (a flag).

    A path whose bytes are not UTF-8 reaches Python as text with surrogate escapes, which neither a
    JSON file (UTF-8) can record nor TensorFlow's file functions take: refused before any work
    rather than when the first of them meets it.
    """
    text = os.fspath(path)
    text = os.fsdecode(text) if isinstance(text, bytes) else text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} {_escaped(text)}: the name is not UTF-8, which kmlp's files and TensorFlow "
                    f"need; use a UTF-8 name") from None
    return text


def _escaped(text: str) -> str:
    """``text`` with the bytes that are not UTF-8 written as escapes (``run\\xff``)."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no byte decodes to, made in Python
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
