"""kmlp.cli: flags over --config over presets, every mistake as one line and exit 2 (checked in this
process through ``cli.main``; one fresh process shows what a user sees), what each command writes."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, TINY_WORDS, run_cli, train_tiny_run

from kmlp import backup as backups
from kmlp import cli, runs
from kmlp.cli import DEFAULT_MINUTES, build_parser, train_config_from_args
from kmlp.config import Config, ConfigError, preset

TINY_MODEL = ["--block-size", "3", "--n-embd", "4", "--n-hidden", "16", "--batch-size", "8",
              "--steps", "40", "--decay-at", "none", "--optimizer", "adam", "--lr", "0.01", "--no-jit"]
NOISE = ("cuda", "oneDNN", "absl", "cpu_feature_guard", "I0000", "W0000", "E0000", "Traceback",
         "UserWarning", "tensorflow")


def train_config(*flags) -> Config:
    return train_config_from_args(build_parser().parse_args(["train", *map(str, flags)]))


def main(capsys, *args):
    """``kmlp ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kmlp: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in lines[0], (needle, err)
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("cli")).path


# ---------------------------------------------------------------------------------------------
# Presets, --config and flags


def test_no_flags_means_the_default_preset_for_a_few_minutes():
    assert DEFAULT_MINUTES == 3 and train_config() == preset("default").replace(minutes=3)
    assert train_config("--lr", "0.01") == preset("default").replace(lr=0.01, minutes=3)


def test_a_preset_a_config_file_or_a_length_means_steps_unless_minutes_are_asked(tmp_path):
    assert train_config("--preset", "default") == preset("default")
    assert train_config("--steps", "100") == preset("default").replace(steps=100)
    assert train_config("--epochs", "2") == preset("default").replace(steps=None, epochs=2)
    assert train_config("--preset", "best", "--minutes", "10") == preset("best").replace(minutes=10)
    run_config = tmp_path / "config.json"  # a --minutes run's config.json holds its planned steps
    runs.write_json(run_config, {"config": preset("default").replace(minutes=3, steps=3750).to_dict()})
    assert train_config("--config", run_config).minutes == 3
    assert train_config("--config", run_config, "--steps", "3750") == preset("default").replace(steps=3750)


def test_jit_and_precision_flags_turn_the_best_preset_back_into_its_float32_recipe():
    assert preset("best").precision == "mixed_bfloat16" and not preset("best").jit_compile
    old = train_config("--preset", "best", "--precision", "float32", "--jit", "--steps", 12000)
    assert (old.precision, old.jit_compile, old.steps) == ("float32", True, 12000)
    assert train_config("--jit", "--no-jit").jit_compile is False  # the last flag given wins


def test_flags_override_the_preset_and_leave_the_rest():
    config = train_config("--preset", "lecture", "--lr", "0.05", "--decay-at", "none", "--n-layers", "2")
    assert (config.lr, config.decay_at, config.n_layers) == (0.05, [], 2)
    assert config.replace(lr=0.1, decay_at=[100_000], n_layers=1) == preset("lecture")
    config = train_config("--preset", "best", "--epochs", "2")
    assert (config.epochs, config.steps) == (2, None)


def test_a_partial_config_file_changes_only_what_it_sets(tmp_path):
    path = tmp_path / "partial.json"
    path.write_text('{"dropout": 0.25, "n_layers": 2}')
    assert train_config("--preset", "best", "--config", path) == preset("best").replace(dropout=0.25, n_layers=2)
    assert train_config("--config", path, "--dropout", "0.3") == preset("default").replace(dropout=0.3, n_layers=2)


def test_a_full_config_file_wins_over_the_preset(tmp_path):
    tuned = preset("default").replace(n_layers=2, norm="layer", dropout=0.1, lr=2e-3)
    path = tmp_path / "tuned.json"
    runs.write_json(path, tuned.to_dict())
    assert train_config("--preset", "lecture", "--config", path) == tuned


def test_the_split_stays_put_when_the_seed_changes():
    assert (train_config("--seed", "3").seed, train_config("--seed", "3").split_seed) == (3, 42)
    assert train_config("--split-seed", "5").split_seed == 5


# ---------------------------------------------------------------------------------------------
# Mistakes: one line, exit 2, nothing written


@pytest.mark.parametrize("flags, needle", [
    (["--block-size", "0"], "--block-size"), (["--n-embd", "0"], "--n-embd"), (["--n-hidden", "-3"], "--n-hidden"),
    (["--batch-size", "0"], "--batch-size"), (["--steps", "0"], "--steps"), (["--steps", "-5"], "--steps"),
    (["--lr", "0"], "--lr"), (["--lr", "-0.1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--samples", "-1"], "--samples"), (["--devices", "-1"], "--devices"),
    (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295"),
    (["--seed", "99999999999"], "--seed"), (["--split-seed", "-1"], "--split-seed"),
    (["--weight-decay", "-0.1"], "--weight-decay must be a number >= 0"),
    (["--dropout", "1.5"], "--dropout must be in"), (["--rdrop", "-1"], "--rdrop"),
    (["--preset", "fast", "--rdrop", "1"], "--rdrop needs --dropout above 0"),
    (["--preset", "huge"], "unknown preset 'huge'; choose one of: best, default, fast, lecture"),
    (["--minutes", "1"], "--minutes and --steps/--epochs both set how long the run trains; give one"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--norm", "group"], "argument --norm: invalid choice"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_a_bad_training_flag_is_one_line_naming_it(flags, needle, tiny_names_file, tmp_path, capsys):
    code, _, err = main(capsys, "train", "--data", tiny_names_file, "--out", tmp_path / "run", *TINY_MODEL, *flags)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_bad_budget_is_one_line(value, tiny_names_file, tmp_path, capsys):
    code, _, err = main(capsys, "train", "--data", tiny_names_file, "--out", tmp_path / "run", "--minutes", value)
    assert_one_line_error(code, err, f"--minutes must be a positive number, got {float(value)!r}")
    code, _, err = main(capsys, "train", "--minutes", "2", "--epochs", "3")
    assert_one_line_error(code, err, "--minutes and --steps/--epochs both set how long the run trains")


@pytest.mark.parametrize("args, needle", [
    (["sample"], "kmlp sample: the following arguments are required: DIR"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["tune", "--max-minutes", "inf"], "--max-minutes must be a positive number"),
    (["tune", "--max-trials", "0"], "--max-trials must be a positive integer"),
    (["tune", "--seed", "-1"], "--seed must be an integer from 0"),
    (["lr-find", "--seed", "-1"], "--seed must be an integer from 0"),
    (["lr-find", "--start-lr", "1", "--end-lr", "0.1"], "--end-lr (0.1) must be above --start-lr (1)"),
    (["lr-find", "--num-steps", "1"], "--num-steps must be an integer of at least 2"),
])
def test_a_bad_flag_of_any_command_is_one_line(args, needle, capsys):
    assert_one_line_error(*main(capsys, *args)[::2], needle)


def test_a_fresh_process_reports_mistakes_before_loading_tensorflow_and_shows_no_noise(tiny_names_file, tmp_path):
    done = run_cli("train", "--data", tiny_names_file, "--seed", "-1", "--out", tmp_path / "run")
    assert_one_line_error(done.returncode, done.stderr, "--seed")
    assert not any(word in done.stdout + done.stderr for word in NOISE) and not (tmp_path / "run").exists()
    script = textwrap.dedent("""
        import contextlib, io, json, sys
        from kmlp.cli import main
        results = []
        for argv in json.loads(sys.argv[1]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(argv)
            results.append([code, err.getvalue()])
        print(json.dumps({"results": results, "tensorflow": "tensorflow" in sys.modules}))
    """)
    mistakes = [["train", "--data", str(tiny_names_file), "--steps", "0"], ["tune", "--max-minutes", "inf"],
                ["train", "--data", str(tiny_names_file), "--minutes", "0"],
                ["lr-find", "--end-lr", "0"], ["train", "--out", str(tiny_names_file)], ["evaluate"],
                ["sample", "run", "--top-p", "2"], ["sample", "run", "--seed", "1180591620717411303424"],
                ["sample", "run", "--temperature", "inf"], ["score", "run"], ["export", "run", "--version", "0"],
                ["serve", "run", "--port", "70000"]]
    done = subprocess.run([sys.executable, "-c", script, json.dumps(mistakes)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    report = json.loads(done.stdout)
    assert [code for code, _ in report["results"]] == [2] * len(mistakes), report
    assert report["tensorflow"] is False  # every mistake was found before TensorFlow loaded


@pytest.mark.parametrize("command", ["sample", "evaluate", "export"])
def test_commands_on_a_folder_that_holds_no_run(command, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert_one_line_error(*main(capsys, command, tmp_path / "empty")[::2], tmp_path / "empty", "holds no kmlp model")
    assert_one_line_error(*main(capsys, command, tmp_path / "nowhere")[::2], tmp_path / "nowhere", "no such run")


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
    code, out_text, err = main(capsys, "train", "--data", runs.read_json(out / "config.json")["data"],
                               "--out", out, *TINY_MODEL)
    assert_one_line_error(code, err, f"{out}/{inside.split('/')[0]}/", "kmlp did not write this")
    assert sorted(p for p in tmp_path.rglob("*")) == before and "data:" not in out_text


def test_export_and_evaluate_work_beside_a_users_file_and_retraining_keeps_the_exports(tiny_run, tmp_path,
                                                                                      capsys):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    for command in (["export", out], ["evaluate", out, "--split", "test"]):
        code, _, err = main(capsys, *command)
        assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    served = (out / "export" / "1" / "saved_model.pb").read_bytes()
    code, _, err = main(capsys, "train", "--data", runs.read_json(out / "config.json")["data"], "--out", out,
                        *TINY_MODEL, "--quiet", "--samples", "0")
    assert code == 0, err
    assert (out / "export" / "1" / "saved_model.pb").read_bytes() == served
    assert runs.read_json(out / "metrics.json")["steps"] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock, backup or old run left


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_records_loss_perplexity_and_bits_on_the_runs_own_data(tiny_run, tmp_path, capsys):
    out = shutil.copytree(tiny_run, tmp_path / "run")
    code, printed, err = main(capsys, "evaluate", out, "--split", "test")
    assert code == 0, err
    metrics = runs.read_json(out / "metrics.json")
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
    [record] = runs.read_json(out / "evaluations.json")
    assert record["data"] == str(other.resolve()) and len(record["data_sha256"]) == 64
    assert record["split"] == "dev" and f"{record['loss']:.4f}" in printed and str(other) in printed


def test_evaluate_prints_the_figures_before_failing_to_record_them(tiny_run, tmp_path, capsys, monkeypatch):
    out = shutil.copytree(tiny_run, tmp_path / "run")

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(out / "metrics.json"))

    monkeypatch.setattr(runs, "write_json", read_only)
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
    assert runs.read_json(tmp_path / "project" / "run" / "config.json")["data"] == str(tmp_path / "project" / "names.txt")
    monkeypatch.chdir(tmp_path)
    code, printed, err = main(capsys, "evaluate", "project/run")
    assert code == 0 and "dev loss" in printed, err
    (tmp_path / "project" / "names.txt").unlink()
    code, _, err = main(capsys, "evaluate", "project/run")
    assert_one_line_error(code, err, "trained on", str(tmp_path / "project" / "names.txt"), "which is missing")


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
    from kmlp import train as training

    monkeypatch.setattr(training, "plan_minutes", lambda config, data, cost: training._scaled(config, 500, 250))
    flags = [f for f in TINY_MODEL if f not in ("--steps", "40")]
    code, out, err = main(capsys, "train", "--data", tiny_names_file, "--out", tmp_path / "run", *flags,
                          "--minutes", "0.5", "--samples", "0", "--quiet")
    assert code == 0, err
    assert re.search(r"^planned 500 steps to end in \d+ s of 30 s \(.* steps/s, .*\); --steps 500 in place of "
                     r"--minutes repeats this run exactly$", out, re.M), out
    budget = runs.read_json(tmp_path / "run" / "metrics.json")["budget"]
    assert budget["minutes"] == 0.5 and budget["planned_steps"] == 500 and budget["repeat_with"] == "--steps 500"
    assert budget["seconds_per_step"] > 0 and budget["seconds_before_training"] > 0
    assert runs.read_json(tmp_path / "run" / "config.json")["config"]["steps"] == 500


# ---------------------------------------------------------------------------------------------
# Interrupted training


def test_sigterm_stops_training_like_ctrl_c_and_resume_finishes_it(tmp_path):
    data = tmp_path / "tiny.txt"
    data.write_text("\n".join(TINY_WORDS) + "\n")
    args = [sys.executable, "-m", "kmlp", "train", "--data", str(data), "--block-size", "3", "--n-embd", "4",
            "--n-hidden", "16", "--batch-size", "1", "--steps", "3000", "--optimizer", "adam", "--lr", "0.01",
            "--decay-at", "none", "--steps-per-call", "10", "--no-jit", "--samples", "0", "--quiet", "--out",
            str(tmp_path / "run")]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metadata = backups.backup_dir(tmp_path / "run") / backups.METADATA_FILE
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not backups.epoch_of(metadata) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip() == "kmlp: terminated" and "--resume continues" in out
    assert not (tmp_path / "run").exists() and metadata.exists()
    resumed = subprocess.run([*args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    metrics = runs.read_json(tmp_path / "run" / "metrics.json")
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    seconds = [float(row.split(",")[history[0].split(",").index("seconds")]) for row in history[1:]]
    assert seconds == sorted(seconds) and metrics["seconds"] >= seconds[-1] > 0
    assert metrics["steps"] == 3000 and metrics["resumed_at_step"] > 0
    assert len(history) == 1 + metrics["epochs"]
    assert sorted(os.listdir(tmp_path)) == ["run", "tiny.txt"]  # no backup, lock or staging left
