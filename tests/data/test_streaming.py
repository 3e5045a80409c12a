"""kmlp.data.streaming: names read as they come give what the whole-file reader gives, name for name
and refusal for refusal, however the pieces fall; a line that never ends; names held for scoring;
the vocabulary checks."""

import hashlib
import io
import os
import random

import pytest
from test_files import outcome, random_file, read_line_by_line

from kmlp import config
from kmlp.data import files, streaming
from kmlp.data.streaming import check_known, held_known, hold_names, iter_names, known_names, stream_file
from kmlp.data.vocab import Vocabulary
from kmlp.errors import DataError


class Trickle(io.RawIOBase):
    """A stream that hands out a few bytes at a time, as a pipe does."""

    def __init__(self, data: bytes, rng: random.Random):
        self.data, self.rng = data, rng

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), self.rng.randrange(1, 9), len(self.data))
        buffer[:n], self.data = self.data[:n], self.data[n:]
        return n


def expected_names(path):
    """What read_file gives, as a list of (line, name); a file without names is simply empty here."""
    expected = outcome(read_line_by_line, path)
    return [] if isinstance(expected, str) and "no names in the file" in expected else expected


def random_cases(rng: random.Random, ascii_only: bool, count: int = 600):
    """(file, name limit, line limit in bytes, piece size): the random files of test_files, some with
    runs of whitespace and letters at the end, read in pieces small enough that many lines span several."""
    for _ in range(count):
        raw = random_file(rng, ascii_only)
        if rng.random() < 0.2:
            raw += (b" " * rng.randrange(50) + b"x" * rng.randrange(20) + "é".encode() * 5
                    + b" \t" * rng.randrange(30))
        yield raw, rng.choice([3, 6, 1000]), rng.choice([20, 1 << 20]), rng.choice([4, 7, 16, 1 << 16])


@pytest.mark.parametrize("ascii_only", [True, False], ids=["ascii", "unicode"])
def test_streams_agree_with_the_whole_file_reader_on_random_files(ascii_only, tmp_path, monkeypatch):
    rng = random.Random(3 if ascii_only else 4)
    path, outcomes = tmp_path / "names.txt", set()
    for raw, limit, line_bytes, piece in random_cases(rng, ascii_only):
        monkeypatch.setattr(files, "MAX_NAME_LENGTH", limit)
        monkeypatch.setattr(files, "MAX_LINE_BYTES", line_bytes)
        monkeypatch.setattr(streaming, "PIECE", piece)
        path.write_bytes(raw)
        expected = expected_names(path)
        assert outcome(lambda p: list(stream_file(p)), path) == expected, raw
        trickled = io.BufferedReader(Trickle(raw, rng), 8)
        assert outcome(lambda p: list(iter_names(trickled, p)), path) == expected, raw
        outcomes.add(expected.split(": ")[2].split(" ")[0] if isinstance(expected, str) else "names")
    assert outcomes >= {"names", "a", "control"} | (set() if ascii_only else {"not"}), outcomes


class Endless(io.RawIOBase):
    """A stream of ``head`` and then ``byte`` forever (as /dev/zero), counting what was taken from it."""

    def __init__(self, head: bytes, byte: bytes):
        self.head, self.byte, self.taken = head, byte, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        n = len(buffer)
        data = (self.head + self.byte * n)[:n]
        self.head = self.head[n:]
        buffer[:n] = data
        self.taken += n
        return n


def test_a_line_longer_than_a_piece_is_judged_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "PIECE", 64)
    path = tmp_path / "names.txt"
    path.write_bytes(b" " * 5000 + b"emma" + b"\t" * 3000 + b"\r\n" + "é".encode() * 1500 + b"\n")
    with pytest.raises(DataError) as err:
        list(stream_file(path))
    assert str(err.value).startswith(f"{path}:2: a line of 1,500 characters is not a name")
    path.write_bytes(b"ava\n" + b"a" * 5000 + b"\xe2\x82\n")
    with pytest.raises(DataError, match=f"{path}:2: not valid UTF-8 \\(byte 0xe2 at column 5001\\)"):
        list(stream_file(path))
    path.write_bytes(b"ava\n" + b" " * 5000 + b"m\x00a" + b" " * 5000)
    with pytest.raises(DataError, match=f"{path}:2: control character U\\+0000 at column 2"):
        list(stream_file(path))


@pytest.mark.parametrize("byte", [b"\0", b"a", "é".encode()], ids=["zero", "letter", "accent"])
def test_a_line_that_never_ends_is_refused_once_it_is_longer_than_a_line_can_be(byte):
    stream = Endless(b"emma\r\nava\n", byte)
    names = iter_names(io.BufferedReader(stream, 4096), "<stdin>")
    assert next(names) == (1, "emma") and next(names) == (2, "ava")  # given as they come
    with pytest.raises(DataError, match=f"^<stdin>:3: a line of more than {files.MAX_LINE_BYTES:,} bytes is "
                                        f"not a name \\(the limit is 1,000 characters\\); expected one name per line$"):
        next(names)
    assert stream.taken <= files.MAX_LINE_BYTES + 2 * streaming.PIECE  # what the line had read of it


def test_a_file_that_cannot_be_read_is_refused_as_train_refuses_it(tmp_path):
    for path in (tmp_path / "missing.txt", tmp_path):
        with pytest.raises(DataError) as streamed:
            list(stream_file(path))
        with pytest.raises(DataError) as whole:
            files.read_file(path)
        assert str(streamed.value) == str(whole.value)


def test_names_to_score_are_read_once_from_a_pipe_and_checked_before_any_is_given(tmp_path):
    vocab = Vocabulary.from_words(["emma", "ava"])
    path = tmp_path / "names.txt"
    path.write_text("emma\n\nava\nzoë\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"^{path}:4: 'zoë' has characters outside the model's vocabulary: 'zo"):
        held_known(hold_names(path), path, vocab)  # before the first name is given
    raw = b"emma\r\n\nava\n  \n"
    read_end, write_end = os.pipe()
    os.write(write_end, raw)
    os.close(write_end)
    try:
        held = hold_names(f"/dev/fd/{read_end}")  # a pipe: what a second reading would find is nothing
    finally:
        os.close(read_end)
    assert held.sha256 == hashlib.sha256(raw).hexdigest() and held.lines.tolist() == [1, 3]
    assert list(held_known(held, "pipe", vocab)) == ["emma", "ava"]
    path.write_bytes(b" \n\n")
    assert list(held_known(hold_names(path), path, vocab)) == []  # nothing to score is no error


def test_names_held_for_scoring_need_their_memory_once_names_to_split_twice(tmp_path, monkeypatch):
    path = tmp_path / "names.txt"
    path.write_bytes(b"emma\n" * 100_000)  # names that take 1.7 MB as read: a byte a character, 12 a name
    monkeypatch.setattr(config, "machine_memory", lambda: 2_500_000)
    assert len(hold_names(path)) == 100_000
    with pytest.raises(DataError, match=f"^{path}: too large for this machine: by line 100,000 its names take "
                                        f".*, and splitting them takes at least"):
        files.read_file(path)
    monkeypatch.setattr(config, "machine_memory", lambda: 1_000_000)
    with pytest.raises(DataError, match="and holding them takes at least"):
        hold_names(path)


def test_names_outside_the_vocabulary_are_named_with_their_line():
    vocab = Vocabulary.from_words(["emma", "ava"])
    rows = known_names(iter_names(io.BytesIO(b"ava\nbob\n"), "<stdin>"), "<stdin>", vocab)
    assert next(rows) == "ava"  # a stream is checked as it is read
    with pytest.raises(DataError, match="^<stdin>:2: 'bob'"):
        next(rows)
    assert check_known(["emma", "ava"], vocab) == ["emma", "ava"]
    with pytest.raises(DataError, match="'zoë' has 'zoë'; 'bo' has 'bo' \\(it knows 'aemv'\\)"):
        check_known(["zoë", "ava", "bo"], vocab)
