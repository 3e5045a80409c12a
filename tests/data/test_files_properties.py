"""kmlp.data.files on any bytes at all: a list of names or one DataError line naming the file, never
another exception; the same answer as its rules for one line (check_line) applied line by line; and
the same answer, and hash, whatever the size of the pieces the file is read in."""

import hashlib
from unittest import mock

from hypothesis import HealthCheck, example, given, settings, strategies as st

from kmlp.data import files
from kmlp.data.files import BOM, check_line, load_words, read_file
from kmlp.errors import DataError

# Bytes that come near the rules: line breaks of every kind, whitespace, a BOM, control characters,
# combining accents (NFC), bytes that are not UTF-8, long lines.
PIECES = st.sampled_from([b"\n", b"\r", b"\r\n", b" ", b"\t", b"\x00", b"\x7f", b"\xc2\x85", b"\xe2\x80\xa8",
                          b"\xef\xbb\xbf", b"e\xcc\x81", b"\xc3\xa9", b"\xff", b"\xc3", b"a" * 999, b"emma",
                          b",", b"."])
FILES = st.binary(max_size=300) | st.lists(PIECES | st.binary(max_size=4), max_size=40).map(b"".join)


def line_by_line(path, raw: bytes) -> list[str]:
    """What check_line, the rules for one line, makes of the file."""
    names = [check_line(path, i, line) for i, line in enumerate(raw.removeprefix(BOM).splitlines(), 1)]
    if not any(names):
        raise DataError(f"{path}: no names in the file (it is empty or holds only blank lines)")
    return [name for name in names if name]


def outcome(read, path, raw):
    try:
        return read(path, raw)
    except DataError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
        return str(e)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=FILES)
def test_any_bytes_give_names_or_one_line_naming_the_file_as_the_rules_for_a_line_say(tmp_path, raw):
    path = tmp_path / "names.txt"
    path.write_bytes(raw)
    read = outcome(lambda p, _: load_words(p), path, raw)
    assert isinstance(read, str) or all(isinstance(name, str) and name for name in read)
    assert read == outcome(line_by_line, path, raw)


def read_in_pieces(piece: int):
    """read_file(path, piece) as (line, name) rows, after checking the hash of what it read."""
    def read(path, raw):
        names = read_file(path, piece)
        assert names.sha256 == hashlib.sha256(raw).hexdigest()
        return list(zip(names.lines.tolist(), names.texts()))
    return read


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=FILES, piece=st.integers(1, 80), line_bytes=st.sampled_from([files.MAX_LINE_BYTES, 9, 40]))
@example(raw=b"\ra" + b"b" * 20, piece=1, line_bytes=9)  # a long line after a "\r": found where it starts
def test_names_read_in_pieces_of_any_size_are_those_read_whole(tmp_path, raw, piece, line_bytes):
    path = tmp_path / "names.txt"
    path.write_bytes(raw)
    with mock.patch.object(files, "MAX_LINE_BYTES", line_bytes):  # lines too long to hold, for some
        whole = outcome(read_in_pieces(len(raw) + 1), path, raw)
        assert outcome(read_in_pieces(piece), path, raw) == whole
        lines = outcome(line_by_line, path, raw)
    assert whole == lines if isinstance(lines, str) else [name for _, name in whole] == lines
