"""kmlp.cli.names: what evaluate prints and records; score --file refuses what train refuses, and reads
its file once."""

import io
import json
import math
import os
import shutil

import pytest
from cli_helpers import TINY_MODEL, assert_one_line_error, main
from conftest import TINY_WORDS

from kmlp.runs import rundir


@pytest.fixture(scope="module")
def tiny_run(tiny_run_dir):
    return tiny_run_dir


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_records_loss_perplexity_and_bits_on_the_runs_own_data(tiny_run, tmp_path, capsys):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    code, printed, err = main(capsys, "evaluate", out, "--split", "test")
    assert code == 0, err
    metrics = rundir.read_json(out / "metrics.json")
    loss = metrics["test_loss"]
    assert metrics["test_perplexity"] == pytest.approx(math.exp(loss))
    assert metrics["test_bits_per_char"] == pytest.approx(loss / math.log(2))
    assert f"test loss {loss:.4f}, perplexity {math.exp(loss):.3f}" in printed
    assert not (out / "evaluations.json").exists()


def test_evaluate_on_another_file_is_recorded_apart_with_its_hash(tiny_run, tmp_path, capsys):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    before = (out / "metrics.json").read_bytes()
    other = tmp_path / "other.txt"
    other.write_text("\n".join(reversed(TINY_WORDS)) + "\nmaya\nlea\n")
    code, printed, err = main(capsys, "evaluate", out, "--data", other)
    assert code == 0, err
    assert (out / "metrics.json").read_bytes() == before  # the run's own figures are untouched
    [record] = rundir.read_json(out / "evaluations.json", expect=list)
    assert record["data"] == str(other.resolve()) and len(record["data_sha256"]) == 64
    assert record["split"] == "dev" and f"{record['loss']:.4f}" in printed and str(other) in printed


def test_evaluate_prints_the_figures_before_failing_to_record_them(tiny_run, tmp_path, capsys, monkeypatch):
    out = shutil.copytree(tiny_run, tmp_path / "run")

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(out / "metrics.json"))

    monkeypatch.setattr(rundir, "write_json", read_only)
    code, printed, err = main(capsys, "evaluate", out)
    assert_one_line_error(code, err, "metrics.json", "Read-only file system", "not recorded")
    assert "dev loss" in printed


def test_a_relative_data_path_still_resolves_from_another_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "names.txt").write_text("\n".join(TINY_WORDS) + "\n")
    monkeypatch.chdir(tmp_path / "project")
    code, _, err = main(capsys, "train", "--data", "names.txt", "--out", "run", *TINY_MODEL, "--quiet",
                        "--samples", "0")
    assert code == 0, err
    assert rundir.read_json(tmp_path / "project" / "run" / "config.json")["data"] == str(tmp_path / "project" / "names.txt")
    monkeypatch.chdir(tmp_path)
    code, printed, err = main(capsys, "evaluate", "project/run")
    assert code == 0 and "dev loss" in printed, err
    (tmp_path / "project" / "names.txt").unlink()
    code, _, err = main(capsys, "evaluate", "project/run")
    assert_one_line_error(code, err, "trained on", str(tmp_path / "project" / "names.txt"), "which is missing")


# ---------------------------------------------------------------------------------------------
# score


@pytest.mark.parametrize("content", [b"emma\nav\x01a\n", b"emma\r\nava\tF\n", b"emma\n" + b"x" * 1001 + b"\n",
                                     b"emma\nzo\xe9\n", b"emma\n" + b"a" * 200_000 + b"\xff\n"],
                         ids=["control", "tab", "long", "utf-8", "utf-8 in a long line"])
def test_score_file_refuses_the_lines_train_refuses_in_the_same_words(content, tiny_run, tmp_path, capsys,
                                                                    monkeypatch):
    names = tmp_path / "names.txt"
    names.write_bytes(content)
    code, _, err = main(capsys, "train", "--data", names, "--out", tmp_path / "run", *TINY_MODEL)
    refused = assert_one_line_error(code, err, f"{names}:2: ")
    code, out, err = main(capsys, "score", tiny_run, "--file", names)
    assert assert_one_line_error(code, err) == refused and out == ""  # before anything is scored
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(content)))
    code, _, err = main(capsys, "score", tiny_run, "--file", "-")
    assert assert_one_line_error(code, err) == refused.replace(str(names), "<stdin>")


def test_score_file_reads_a_pipe_once_and_scores_every_name(tiny_run, capsys):
    read_end, write_end = os.pipe()
    os.write(write_end, b"emma\n\nava\n")
    os.close(write_end)
    try:
        code, out, err = main(capsys, "score", tiny_run, "--file", f"/dev/fd/{read_end}", "--json")
    finally:
        os.close(read_end)
    assert code == 0, err
    assert [row["name"] for row in json.loads(out)] == ["emma", "ava"]  # a second reading would find none
