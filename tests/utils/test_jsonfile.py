"""kmlp.utils.jsonfile: the one reader of kmlp's JSON files, and which paths a JSON file can record;
kmlp.utils.atomic: a write the system refuses names its file."""

import errno
import os

import pytest

from kmlp.utils import atomic
from kmlp.utils.jsonfile import MAX_JSON_BYTES, check_utf8_path, read_json


@pytest.mark.parametrize("content, expect, message", [
    ('{"a": 1}', list, "expected a JSON array, found an object"),
    ("[1]", dict, "expected a JSON object, found an array"),
    ("null", dict, "expected a JSON object, found null"),
    ("{", dict, r"not valid JSON \(Expecting property name"),
    (b"\xff{}", dict, r"not UTF-8 \(byte 0\)"),
    ("[" * 100_000 + "]" * 100_000, None, r"not valid JSON \(nested too deeply\)"),
    ("9" * 5000, None, r"not valid JSON \(Exceeds the limit \(4300 digits\) for integer string conversion"),
    (" " * (MAX_JSON_BYTES + 1), None, "larger than 16,777,216 bytes, so not a file kmlp wrote"),
], ids=["object-for-array", "array-for-object", "null", "broken", "not-utf8", "nested", "long-integer", "too-large"])
def test_every_way_a_file_is_not_the_json_asked_for_is_one_line_naming_it(tmp_path, content, expect, message):
    path = tmp_path / "file.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=f"^{path}: {message}") as refused:
        read_json(path, expect=expect)
    assert "\n" not in str(refused.value)


def test_what_is_no_regular_file_is_refused_without_reading_it(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opening it to read would wait for a writer
    (tmp_path / "zero.json").symlink_to("/dev/zero")  # reading it would never end
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    (tmp_path / "real.json").write_text("{}")
    for name in ("fifo", "zero.json", "."):
        with pytest.raises(ValueError, match="not a regular file"):
            read_json(tmp_path / name)
    assert read_json(tmp_path / "link.json") == {}
    with pytest.raises(ValueError, match="cannot be read"):
        read_json(tmp_path / "link.json", follow_symlinks=False)
    with pytest.raises(KeyError, match="no such file"):  # the error type is the caller's
        read_json(tmp_path / "missing.json", error=KeyError)


def test_a_path_that_is_not_utf8_cannot_be_recorded(tmp_path):
    assert check_utf8_path(tmp_path / "été", "--out") == str(tmp_path / "été")
    for path in (os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff"), os.fsencode(str(tmp_path)) + b"/run\xff"):
        with pytest.raises(ValueError, match=r"^--out .*/run\\xff: the name is not UTF-8"):
            check_utf8_path(path, "--out")


def test_a_write_the_system_refuses_names_its_file_and_leaves_none(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a failed write() says it: no file named

    monkeypatch.setattr(atomic.json, "dump", full)
    with pytest.raises(OSError) as refused:
        atomic.write_json(tmp_path / "metrics.json", {})
    assert (refused.value.errno, refused.value.filename) == (errno.ENOSPC, str(tmp_path / "metrics.json"))
    assert list(tmp_path.iterdir()) == []
