"""kmlp.data.files: the reader: every check of a names file, as a line-by-line reader makes it, on random files;
a line that never ends; names too many to split; the warning for files that look like a table."""

import logging
import random

import numpy as np
import pytest

from kmlp import config
from kmlp.data import fetch, files
from kmlp.data.files import check_line, load_words, read_names
from kmlp.data.pipeline import NamesData
from kmlp.errors import DataError


def read_line_by_line(path):
    """The reader as it was: one Python string per line, each through check_line (which words every
    refusal), one after another."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    names = [(lineno, text) for lineno, line in enumerate(raw.splitlines(), start=1)
             if (text := check_line(path, lineno, line))]
    if not names:
        raise DataError(f"{path}: no names in the file (it is empty or holds only blank lines)")
    return names


def outcome(read, path):
    try:
        return read(path)
    except DataError as e:
        return f"DataError: {e}"


LETTERS = [b"a", b"b", b"m", b"Z", b".", b"'", b"-", b"7"]
ODD_ASCII = [b" ", b"\t", b"\x0b", b"\x0c", b"\x1c", b"\x1f", b"\x00", b"\x7f", b"\r", b"\r\n", b"\n\n"]
NON_ASCII = ["é", "e\u0301", "\u0301", "\u0327\u0301", "ß", "Ω", "ー", "😀", "\ufeff", "\xa0", "\x85",
             "\x9f", "\u2000", "\u2001", "\u2028", "\u3000", "\u1100\u1161"]  # Hangul jamo compose
INVALID = [b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80"]


def random_file(rng: random.Random, ascii_only: bool) -> bytes:
    pieces = LETTERS * 6 + ODD_ASCII + [b"\n"] * 12
    if not ascii_only:
        pieces += [c.encode() for c in NON_ASCII] + (INVALID if rng.random() < 0.3 else [])
    body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 80)))
    return (b"\xef\xbb\xbf" if rng.random() < 0.2 else b"") + body


@pytest.mark.parametrize("ascii_only", [True, False], ids=["ascii", "unicode"])
def test_reader_agrees_with_the_line_by_line_reader_on_random_files(ascii_only, tmp_path, monkeypatch):
    rng = random.Random(1 if ascii_only else 2)
    path = tmp_path / "names.txt"
    outcomes = set()
    for case in range(600):
        limit = rng.choice([3, 6, 1000])
        monkeypatch.setattr(files, "MAX_NAME_LENGTH", limit)
        path.write_bytes(random_file(rng, ascii_only))
        expected = outcome(read_line_by_line, path)
        assert outcome(read_names, path) == expected, (case, path.read_bytes())
        outcomes.add(expected.split(": ")[2].split(" ")[0] if isinstance(expected, str) else "names")
    # every kind of outcome was met: names, and each refusal
    assert outcomes >= {"names", "no", "a", "control"} | (set() if ascii_only else {"not"}), outcomes


def test_refusals_name_the_file_and_line(tmp_path):
    cases = {
        b"emma\nzo\xe9\nava\n": ":2: not valid UTF-8 (byte 0xe9 at column 3)",
        b"emma\r\n\r\nav\x00a\n": ":3: control character U+0000 at column 3",
        b"emma\n\xff\n\x01\n": ":2: not valid UTF-8",  # the first fault met, line by line
        b"emma\nav\x01a\n\xff\n": ":2: control character U+0001",
        b"\xef\xbb\xbfemma\rava\r" + b"x" * 1001 + b"\r": ":3: a line of 1,001 characters is not a name",
        b"  \t \n\n": ": no names in the file",
    }
    for raw, message in cases.items():
        path = tmp_path / "names.txt"
        path.write_bytes(raw)
        with pytest.raises(DataError) as err:
            load_words(path)
        assert str(err.value).startswith(f"{path}{message}"), (raw, str(err.value))
    with pytest.raises(DataError, match="no such file"):
        load_words(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a directory"):
        load_words(tmp_path)


def test_names_txt_read_in_pieces_is_names_txt_and_its_hash_the_published_one(names_path):
    whole, pieces = files.read_file(names_path), files.read_file(names_path, piece=4096)
    assert whole.sha256 == pieces.sha256 == fetch.NAMES_SHA256
    assert whole.texts() == pieces.texts() and len(whole) == 32_033
    data = NamesData.from_file(names_path)
    assert data.data_sha256 == fetch.NAMES_SHA256 and data.only("train", "dev").data_sha256 == fetch.NAMES_SHA256


def test_a_line_that_never_ends_is_refused_once_it_is_longer_than_a_line_can_be(tmp_path):
    with pytest.raises(DataError, match=f"^/dev/zero:1: a line of more than {files.MAX_LINE_BYTES:,} bytes is not "
                                        f"a name \\(the limit is 1,000 characters\\); expected one name per line$"):
        files.read_file("/dev/zero")
    path = tmp_path / "names.txt"
    path.write_bytes(b"emma\r\nava\r\n" + b" " * files.MAX_LINE_BYTES + b"mia\n")  # whitespace counts as read
    with pytest.raises(DataError, match=f"^{path}:3: a line of more than"):
        files.read_file(path, piece=1000)


def test_names_this_machine_could_not_split_are_refused_as_they_are_read(tmp_path, monkeypatch):
    path = tmp_path / "names.txt"
    path.write_bytes(b"emma\n" * 10_000)
    monkeypatch.setattr(config, "machine_memory", lambda: 100_000)
    with pytest.raises(DataError) as err:
        files.read_file(path, piece=4096)
    message = str(err.value)
    assert message.startswith(f"{path}: too large for this machine: by line ") and "\n" not in message
    assert "of memory, more than this machine's" in message
    assert int(message.split("by line ")[1].split(" ")[0].replace(",", "")) < 5_000  # not read to its end


def test_whitespace_at_the_ends_is_stripped_however_long(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes(b" " * 5000 + b"emma" + b"\t" * 3000 + b"\n" + b" " * 20000 + b"\n  mary ann \n")
    assert read_names(path) == [(1, "emma"), (3, "mary ann")]


def test_a_table_gets_a_one_line_warning_naming_the_file(tmp_path, caplog):
    table = tmp_path / "names.csv"
    table.write_text("name,sex,year\nemma,F,2004\nava,F,2007\nliam,M,2001\nnoah\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="kmlp.data"):
        words = load_words(table)
    assert words[1] == "emma,F,2004"  # read as it is
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith(f"{table}: ") and "\n" not in message and "','" in message and "80%" in message
    caplog.clear()
    names = tmp_path / "names.txt"
    names.write_text("emma\nava\nsmith, john\nliam\nmia|zoe\n", encoding="utf-8")  # a few: no warning
    with caplog.at_level(logging.WARNING, logger="kmlp.data"):
        load_words(names)
        NamesData.from_words(["a;b"] * 2 + [f"n{i}" for i in range(10)])  # a list is not a file
    assert not caplog.records


def test_a_file_and_its_list_of_names_give_the_same_data(tmp_path):
    words = ["Zoë", "José", "emma", "emma", "mary ann", "st.john", "Ünal", "ava", "mia", "li", "x", "bo"]
    path = tmp_path / "names.txt"
    path.write_text("\r\n".join(f"  {w}\t" for w in words), encoding="utf-8")
    from_file = NamesData.from_file(path, block_size=4, split_seed=2)
    from_list = NamesData.from_words(words, block_size=4, split_seed=2)
    assert from_file.vocab == from_list.vocab
    for split in ("train", "dev", "test"):
        np.testing.assert_array_equal(from_file.streams[split], from_list.streams[split])
