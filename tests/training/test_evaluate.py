"""kmlp.training.evaluate: the figures of a saved run on a split, and where they are recorded: the
run's own data in metrics.json, any other file in evaluations.json with its hash."""

import dataclasses
import hashlib
import json
import math
import os
import shutil

import pytest
from conftest import TINY_WORDS, copy_run

from kmlp.errors import ConfigError, RunError
from kmlp.runs import rundir
from kmlp.runs.rundir import load_run
from kmlp.training.evaluate import evaluate_run, record_evaluation
from kmlp.training.setup import EVAL_BATCH, evaluate_loss


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def run(tiny_run_dir, tmp_path):
    """A copy of the session's tiny run, to write into."""
    return load_run(copy_run(tiny_run_dir, tmp_path / "run"))


def test_the_figures_on_the_runs_own_data_go_to_metrics(run):
    evaluation = evaluate_run(run, "test")
    data = run.splits()[0]
    assert evaluation.own_data and evaluation.data == run.data_path and evaluation.split == "test"
    assert evaluation.names == len(data["test"]) and evaluation.data_sha256 == sha256_of(run.data_path)
    assert evaluation.perplexity == pytest.approx(math.exp(evaluation.loss))
    assert evaluation.bits_per_char == pytest.approx(evaluation.loss / math.log(2))
    assert record_evaluation(run, evaluation) == run.path / "metrics.json"
    metrics = rundir.read_json(run.path / "metrics.json")
    assert {k: metrics[f"test_{k}"] for k in ("loss", "perplexity", "bits_per_char")} == evaluation.figures()
    assert metrics["dev_loss"] == run.metrics["dev_loss"] and not (run.path / "evaluations.json").exists()


def test_the_loss_is_the_mean_over_every_example_of_the_split(run):
    from kmlp.data.pipeline import NamesData

    data = NamesData.for_config(run.data_path, run.config, vocab=run.vocab)
    evaluation = evaluate_run(run, "dev")
    assert evaluation.examples == data.num_examples("dev")
    dev = data.dataset("dev", EVAL_BATCH, shuffle=False)
    assert evaluation.loss == pytest.approx(evaluate_loss(run.model, dev))


def test_another_file_is_recorded_apart_and_the_runs_figures_stay(run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("\n".join(reversed(TINY_WORDS)) + "\nmaya\nlea\n")
    before = (run.path / "metrics.json").read_bytes()
    first = evaluate_run(run, "dev", other)
    assert not first.own_data and first.data == other
    assert record_evaluation(run, first) == run.path / "evaluations.json"
    record_evaluation(run, evaluate_run(run, "train", other))
    records = json.loads((run.path / "evaluations.json").read_text())
    assert [r["split"] for r in records] == ["dev", "train"] and (run.path / "metrics.json").read_bytes() == before
    assert records[0] == {"data": str(other.resolve()), "data_sha256": sha256_of(other), "split": "dev",
                          **first.figures(), "examples": first.examples}


def test_a_copy_of_the_training_file_elsewhere_is_the_runs_own_data(run, tmp_path):
    copy = shutil.copy(run.data_path, tmp_path / "copy.txt")  # known by its hash, not its path
    assert evaluate_run(run, "dev", copy).own_data


def test_the_runs_own_names_from_a_pipe_are_known_by_the_hash_of_what_was_read(run):
    read_end, write_end = os.pipe()
    os.write(write_end, run.data_path.read_bytes())
    os.close(write_end)
    try:
        evaluation = evaluate_run(run, "dev", f"/dev/fd/{read_end}")  # a pipe: read once, hashed as read
    finally:
        os.close(read_end)
    assert evaluation.own_data and evaluation.data_sha256 == run.info["data_sha256"]


def test_a_run_whose_data_is_gone_or_unnamed_needs_data_and_a_split_must_exist(run, tmp_path):
    with pytest.raises(ConfigError, match="split must be one of train, dev, test, got 'valid'"):
        evaluate_run(run, "valid")
    with pytest.raises(RunError, match="gone.txt, which is missing; pass --data PATH"):
        evaluate_run(dataclasses.replace(run, info={**run.info, "data": str(tmp_path / "gone.txt")}))
    unnamed = dataclasses.replace(run, info={**run.info, "data": None})
    with pytest.raises(RunError, match="config.json names no data file") as err:
        evaluate_run(unnamed)
    assert unnamed.splits() == (None, str(err.value))  # sampling's marks say it in the same words


def test_a_record_that_cannot_be_written_says_so_in_one_line(run, monkeypatch):
    evaluation = evaluate_run(run)

    def read_only(path, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(rundir, "write_json", read_only)
    with pytest.raises(RunError, match="metrics.json: cannot be written \\(Read-only file system\\); the "
                                       "evaluation was not recorded"):
        record_evaluation(run, evaluation)
