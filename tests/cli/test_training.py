"""kmlp.cli.training: train, tune and lr-find never write over a user's files; train's progress,
its --minutes plan, and one rule for a budget and a length in flags and files."""

import json
import re
import shutil

import numpy as np
import pytest
from cli_helpers import TINY_MODEL, assert_one_line_error, main

from kmlp.cli import main as cli
from kmlp.runs import rundir
from kmlp.runs.rundir import load_run
from kmlp.training import budget


@pytest.fixture(scope="module")
def tiny_run(tiny_run_dir):
    return tiny_run_dir


# ---------------------------------------------------------------------------------------------
# Output folders: never over a user's files


def test_train_refuses_a_folder_of_the_users_before_training(tiny_names_file, tmp_path, capsys):
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    code, out, err = main(capsys, "train", "--data", tiny_names_file, "--out", user, *TINY_MODEL)
    assert_one_line_error(code, err, user, "thesis.txt", "kmlp did not write")
    assert (user / "thesis.txt").read_text() == "years of work" and "data:" not in out
    code, _, err = main(capsys, "train", "--data", tiny_names_file, "--out", user / "thesis.txt", *TINY_MODEL)
    assert_one_line_error(code, err, "is a file")
    assert [p.name for p in user.iterdir()] == ["thesis.txt"]


@pytest.mark.parametrize("command", ["tune", "lr-find"])
def test_tune_and_lr_find_refuse_an_output_that_is_a_file_or_a_users_folder(command, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert_one_line_error(*main(capsys, command, "--out", tmp_path / "file")[::2], "is a file")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("mine")
    assert_one_line_error(*main(capsys, command, "--out", tmp_path / "folder")[::2], "notes.txt")


@pytest.mark.parametrize("command", ["tune", "lr-find"])
def test_tune_and_lr_find_refuse_a_folder_that_holds_only_someone_elses_logs(command, tmp_path, capsys):
    logs = tmp_path / "u" / "logs" / "train"
    logs.mkdir(parents=True)
    (logs / "events.out.tfevents.1").write_bytes(b"another project's logs")
    assert_one_line_error(*main(capsys, command, "--out", tmp_path / "u")[::2], "u/logs", "kmlp did not write")
    assert (logs / "events.out.tfevents.1").read_bytes() == b"another project's logs"


@pytest.mark.parametrize("inside", ["logs/B/model.keras", "logs/train/notes.txt", "export/1/mine.txt"])
def test_retraining_refuses_a_run_holding_anything_it_did_not_write_at_any_depth(inside, tiny_run, tmp_path,
                                                                                capsys):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    (out / inside).parent.mkdir(parents=True, exist_ok=True)
    (out / inside).write_text("not kmlp's")  # e.g. another run trained with --out run/logs/B
    before = sorted(p for p in tmp_path.rglob("*"))
    code, out_text, err = main(capsys, "train", "--data", rundir.read_json(out / "config.json")["data"],
                               "--out", out, *TINY_MODEL)
    assert_one_line_error(code, err, f"{out}/{inside.split('/')[0]}/", "kmlp did not write this")
    assert sorted(p for p in tmp_path.rglob("*")) == before and "data:" not in out_text


# ---------------------------------------------------------------------------------------------
# Time budget and progress


def test_train_shows_progress_in_optimizer_steps_unless_quiet(tiny_names_file, tmp_path, capsys):
    code, out, err = main(capsys, "train", "--data", tiny_names_file, "--out", tmp_path / "run", *TINY_MODEL,
                          "--samples", "0")
    assert code == 0, err
    assert re.search(r"^step 40/40  100%  \d+:\d\d elapsed  loss \d\.\d{4}  dev \d\.\d{4}$", out, re.M), out
    assert "/step" not in out and "\r" not in out  # not Keras's bar; plain lines, as stdout is no terminal
    code, out, err = main(capsys, "train", "--data", tiny_names_file, "--out", tmp_path / "run", *TINY_MODEL,
                          "--samples", "0", "--quiet")
    assert code == 0, err
    assert "train loss" in out and not re.search(r"^step ", out, re.M)


def test_train_minutes_plans_the_steps_and_says_how_to_repeat_them(tiny_names_file, tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setattr(budget, "plan_minutes", lambda config, data, cost: budget._scaled(config, 500, 250))
    flags = [f for f in TINY_MODEL if f not in ("--steps", "40")]
    code, out, err = main(capsys, "train", "--data", tiny_names_file, "--out", tmp_path / "run", *flags,
                          "--minutes", "0.5", "--samples", "0", "--quiet")
    assert code == 0, err
    assert re.search(r"^planned 500 steps to end in \d+ s of 30 s \(.* steps/s, .*\); --steps 500 in place of "
                     r"--minutes repeats this run exactly$", out, re.M), out
    record = rundir.read_json(tmp_path / "run" / "metrics.json")["budget"]
    assert record["minutes"] == 0.5 and record["planned_steps"] == 500 and record["repeat_with"] == "--steps 500"
    assert record["seconds_per_step"] > 0 and record["seconds_before_training"] > 0
    ran = rundir.read_json(tmp_path / "run" / "config.json")["config"]
    assert ran["steps"] == 500 and ran["minutes"] is None and ran["stop_at"] is None
    code, out, err = main(capsys, "train", "--data", tiny_names_file, "--out", tmp_path / "again", "--config",
                          tmp_path / "run" / "config.json", "--samples", "0", "--quiet")
    assert code == 0, err
    assert "--minutes" not in out and rundir.read_json(tmp_path / "again" / "config.json")["config"] == ran
    timed, repeated = (load_run(tmp_path / name).model for name in ("run", "again"))
    for a, b in zip(timed.variables, repeated.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("keys, flags", [
    (["minutes", "steps"], ["--minutes", "1", "--steps", "40"]),
    (["minutes", "epochs"], ["--minutes", "1", "--epochs", "2"]),
    (["minutes", "stop_at"], ["--minutes", "1", "--stop-at", "20"]),
])
def test_a_budget_and_a_length_from_one_file_are_refused_as_from_the_flags(keys, flags, tmp_path, capsys):
    """One rule: a --config file that sets both, as the flags that give both, is refused in one line
    naming them, before anything loads; null is not set (a run's own config.json has minutes null)."""
    hand_written = tmp_path / "mine.json"
    hand_written.write_text(json.dumps({"n_hidden": 16, keys[0]: 1, keys[1]: 20}))
    line = assert_one_line_error(*main(capsys, "train", "--config", hand_written)[::2])
    assert line == (f"kmlp: error: {hand_written}: {keys[0]} and {keys[1]} both set how long the run trains; "
                    f"give one (a --minutes run records in metrics.json the --steps that repeat it exactly)")
    line = assert_one_line_error(*main(capsys, "train", *flags)[::2])
    assert line == (f"kmlp: error: {flags[0]} and {flags[2]} both set how long the run trains; give one (a "
                    f"--minutes run records in metrics.json the --steps that repeat it exactly)")
    hand_written.write_text(json.dumps({keys[0]: None, keys[1]: 20, "steps": 100}))
    assert cli.train_config_from_args(cli.build_parser().parse_args(["train", "--config", str(hand_written)]))


def test_stop_at_comes_with_a_length_and_a_new_length_drops_a_files(tmp_path):
    def config(*flags):
        return cli.train_config_from_args(cli.build_parser().parse_args(["train", *flags]))

    assert config("--steps", "3000", "--stop-at", "500").stop_at == 500
    cut = tmp_path / "config.json"  # as a --minutes run that was cut records it
    cut.write_text(json.dumps({"config": {"steps": 3000, "stop_at": 500, "minutes": None}}))
    assert config("--config", str(cut)).stop_at == 500 and config("--config", str(cut)).minutes is None
    assert config("--config", str(cut), "--steps", "3000").stop_at is None
    assert config("--config", str(cut), "--stop-at", "800").stop_at == 800
    assert config("--config", str(cut), "--minutes", "2").stop_at is None  # planned anew
