"""kmlp.data.streaming: names read in pieces give what the whole-file reader gives, name for name and
refusal for refusal, however the pieces fall; lines too long to keep; the vocabulary checks."""

import io
import random

import pytest
from test_files import outcome, random_file, read_line_by_line

from kmlp.data import files, streaming
from kmlp.data.streaming import (check_known, file_characters, iter_names, known_names, read_known,
                                 stream_file)
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
    """(file, line limit, piece size): the random files of test_files, some with runs of whitespace and
    letters at the end, read in pieces small enough that many lines span several."""
    for _ in range(count):
        raw = random_file(rng, ascii_only)
        if rng.random() < 0.2:
            raw += (b" " * rng.randrange(50) + b"x" * rng.randrange(20) + "é".encode() * 5
                    + b" \t" * rng.randrange(30))
        yield raw, rng.choice([3, 6, 1000]), rng.choice([4, 7, 16, 1 << 16])


@pytest.mark.parametrize("ascii_only", [True, False], ids=["ascii", "unicode"])
def test_streams_agree_with_the_whole_file_reader_on_random_files(ascii_only, tmp_path, monkeypatch):
    rng = random.Random(3 if ascii_only else 4)
    path, outcomes = tmp_path / "names.txt", set()
    for raw, limit, piece in random_cases(rng, ascii_only):
        monkeypatch.setattr(files, "MAX_NAME_LENGTH", limit)
        monkeypatch.setattr(streaming, "PIECE", piece)
        path.write_bytes(raw)
        expected = expected_names(path)
        assert outcome(lambda p: list(stream_file(p)), path) == expected, raw
        trickled = io.BufferedReader(Trickle(raw, rng), 8)
        assert outcome(lambda p: list(iter_names(trickled, p)), path) == expected, raw
        outcomes.add(expected.split(": ")[2].split(" ")[0] if isinstance(expected, str) else "names")
    assert outcomes >= {"names", "a", "control"} | (set() if ascii_only else {"not"}), outcomes


def test_a_line_longer_than_a_piece_is_judged_whole_without_being_kept(tmp_path, monkeypatch):
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


def test_a_file_that_cannot_be_read_is_refused_as_train_refuses_it(tmp_path):
    for path in (tmp_path / "missing.txt", tmp_path):
        with pytest.raises(DataError) as streamed:
            list(stream_file(path))
        with pytest.raises(DataError) as whole:
            files.read_file(path)
        assert str(streamed.value) == str(whole.value)


def test_names_outside_the_vocabulary_are_named_with_their_line(tmp_path):
    vocab = Vocabulary.from_words(["emma", "ava"])
    path = tmp_path / "names.txt"
    path.write_text("emma\n\nava\nzoë\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"^{path}:4: 'zoë' has characters outside the model's vocabulary: 'zo"):
        read_known(path, vocab)  # before the first name is given
    with pytest.raises(DataError, match=f"^{path}:4: 'zoë'"):
        read_known(path, vocab, file_characters(path))  # the characters of a first reading
    path.write_text("emma\n\nava\n", encoding="utf-8")
    assert file_characters(path) == set("emav")
    assert list(read_known(path, vocab)) == ["emma", "ava"]
    rows = known_names(iter_names(io.BytesIO(b"ava\nbob\n"), "<stdin>"), "<stdin>", vocab)
    assert next(rows) == "ava"  # a stream is checked as it is read
    with pytest.raises(DataError, match="^<stdin>:2: 'bob'"):
        next(rows)
    assert check_known(["emma", "ava"], vocab) == ["emma", "ava"]
    with pytest.raises(DataError, match="'zoë' has 'zoë'; 'bo' has 'bo' \\(it knows 'aemv'\\)"):
        check_known(["zoë", "ava", "bo"], vocab)
