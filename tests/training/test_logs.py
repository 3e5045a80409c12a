"""kmlp.training.logs: TensorBoard logs of a run, read back with TensorBoard's own readers; the projector's
files; no step twice after a resume; the logs of a search and a range test; TensorBoard itself
serving them."""

import csv
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
from tensorboard.plugins.projector import ProjectorConfig

from kmlp.config import Config
from kmlp.runs import manifest
from kmlp.runs.rundir import load_run
from kmlp.training import backup as backups, logs
from kmlp.training.lr_find import range_test
from kmlp.training.train import train
from kmlp.training.tune import tune

# 60 steps in 4 evaluations of 3 compiled calls of 5 steps each: several points per epoch. (The
# session's tiny run, tiny_run_dir, is a run of TINY.)
TINY = Config(block_size=3, n_embd=4, n_hidden=16, batch_size=8, steps=60, decay_at=[30], lr=0.3,
              steps_per_call=5, early_stopping=0)
EMBEDDING_TENSOR = "embedding"


def quiet(*_):
    pass


def events(run_dir) -> dict[str, list[tuple[int, object]]]:
    """Every tag of a TensorBoard run folder: [(step, value), ...] in the order written."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={TENSORS: 0})
    accumulator.Reload()
    return {tag: [(e.step, tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]}


def scalars(run_dir, tag) -> dict[int, float]:
    points = events(run_dir)[tag]
    steps = [step for step, _ in points]
    assert len(steps) == len(set(steps)), f"{tag}: a step written twice: {steps}"
    return {step: float(value) for step, value in points}


def history_rows(run_dir) -> list[dict]:
    with open(Path(run_dir) / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_event_files_hold_the_history_at_its_optimizer_steps(tiny_run_dir):
    run_dir = tiny_run_dir
    assert Config.from_dict(json.loads((run_dir / "config.json").read_text())["config"]) == TINY
    train_dir, dev_dir = run_dir / "logs" / "train", run_dir / "logs" / "validation"
    rows = history_rows(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    per_epoch = metrics["steps"] // metrics["epochs"]
    epoch_steps = [(int(row["epoch"]) + 1) * per_epoch for row in rows]
    assert epoch_steps[-1] == 60 and len(rows) == 4

    for directory, tag, column in [(train_dir, "epoch_loss", "loss"), (dev_dir, "epoch_loss", "val_loss"),
                                   (train_dir, "epoch_learning_rate", "lr")]:
        logged = scalars(directory, tag)
        assert sorted(logged) == epoch_steps, tag
        for step, row in zip(epoch_steps, rows):
            assert logged[step] == pytest.approx(float(row[column]), rel=1e-6), (tag, step)

    # One point per compiled call of 5 steps, at its optimizer step; within an epoch the calls'
    # own means average to the epoch's loss (Keras reports only the running mean).
    batch_loss, batch_rate = scalars(train_dir, "batch_loss"), scalars(train_dir, "batch_learning_rate")
    assert sorted(batch_loss) == sorted(batch_rate) == list(range(5, 61, 5))
    for end, row in zip(epoch_steps, rows):
        calls = [batch_loss[s] for s in range(end - per_epoch + 5, end + 1, 5)]
        assert np.mean(calls) == pytest.approx(float(row["loss"]), abs=1e-5)
        assert len(set(np.round(calls, 6))) > 1  # the calls' own losses, not one mean repeated
    assert batch_rate == {s: pytest.approx(0.3 if s <= 30 else 0.03) for s in range(5, 61, 5)}

    config_text = dict(events(train_dir)["config"])[0].item().decode()
    assert "| n_hidden | 16 |" in config_text and "| decay_at | [30] |" in config_text


def test_projector_config_names_the_embedding_and_its_labels_in_vocabulary_order(tiny_run_dir):
    run_dir = tiny_run_dir
    train_dir = run_dir / "logs" / "train"
    config = text_format.Parse((train_dir / "projector_config.pbtxt").read_text(), ProjectorConfig())
    assert len(config.embeddings) == 1
    embedding = config.embeddings[0]
    assert (embedding.tensor_name, embedding.tensor_path, embedding.metadata_path) == (
        EMBEDDING_TENSOR, "embedding.tsv", "metadata.tsv")

    run = load_run(run_dir)
    labels = (train_dir / embedding.metadata_path).read_text(encoding="utf-8").split("\n")
    assert labels[-1] == "" and labels[:-1] == ["."] + run.vocab.chars  # index order, boundary first
    table = np.loadtxt(train_dir / embedding.tensor_path, delimiter="\t", dtype=np.float32)
    np.testing.assert_array_equal(table, run.model.get_layer("embedding").get_weights()[0])  # the last


def test_training_a_run_again_replaces_its_logs_with_the_new_trainings(tiny_run_dir, tmp_path):
    """Like history.csv, a run's logs are those of the model it holds: no point of the old training
    is left among the new one's, and no stale projector table."""
    run_dir = tiny_run_dir
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    again = TINY.replace(steps=30, decay_at=[20], n_hidden=12)
    retrained = train(again, data_path=run_dir.parent / "tiny.txt", out_dir=out, verbose=0, log=quiet)
    train_dir = out / "logs" / "train"
    assert max(scalars(train_dir, "batch_loss")) == 30 and max(scalars(train_dir, "epoch_loss")) == 30
    assert sorted(scalars(out / "logs" / "validation", "epoch_loss")) == [
        (int(row["epoch"]) + 1) * 30 // retrained.metrics["epochs"] for row in history_rows(out)]
    assert "| n_hidden | 12 |" in dict(events(train_dir)["config"])[0].item().decode()
    table = np.loadtxt(train_dir / "embedding.tsv", delimiter="\t", dtype=np.float32)
    np.testing.assert_array_equal(table, load_run(out).model.get_layer("embedding").get_weights()[0])


class KilledAfterLogging(Exception):
    pass


def test_resume_after_a_kill_writes_no_step_twice(tiny_names_file, tmp_path, monkeypatch):
    """Killed at the worst moment: the third evaluation is logged and flushed, its backup not yet
    saved. The resumed run does that epoch again; its points replace the killed run's."""
    out = tmp_path / "run"
    original_save = keras.callbacks.BackupAndRestore.on_epoch_end

    def killed_at_third_epoch(self, epoch, logs=None):
        if epoch == 2:
            raise KilledAfterLogging()
        original_save(self, epoch, logs)

    with monkeypatch.context() as patch:
        patch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", killed_at_third_epoch)
        with pytest.raises(KilledAfterLogging):
            train(TINY, data_path=tiny_names_file, out_dir=out, verbose=0, log=quiet)
    live = backups.backup_dir(out) / "logs"
    assert 45 in scalars(live / "train", "epoch_loss")  # written after the epoch the backup holds

    said = []
    train(TINY, data_path=tiny_names_file, out_dir=out, verbose=0, log=said.append, resume=True)
    assert any("resuming from" in line and "2 of 4 epochs" in line for line in said)
    assert logs.watch_hint(live, out) in said  # where to watch, printed by every training
    train_dir, dev_dir = out / "logs" / "train", out / "logs" / "validation"
    assert sorted(scalars(train_dir, "batch_loss")) == list(range(5, 61, 5))
    for directory in (train_dir, dev_dir):  # scalars() fails on any step written twice
        assert sorted(scalars(directory, "epoch_loss")) == [15, 30, 45, 60]
    assert [step for step, _ in events(train_dir)["config"]] == [0]
    rows = history_rows(out)
    assert [scalars(train_dir, "epoch_loss")[s] for s in (15, 30, 45, 60)] == pytest.approx(
        [float(row["loss"]) for row in rows], rel=1e-6)

    reference = train(TINY, data_path=tiny_names_file, out_dir=tmp_path / "uninterrupted", verbose=0,
                      log=quiet)
    expected = scalars(reference.out_dir / "logs" / "validation", "epoch_loss")
    assert scalars(dev_dir, "epoch_loss") == pytest.approx(expected, abs=1e-5)


def test_trim_drops_later_steps_and_a_record_cut_short(tmp_path):
    log_dir = tmp_path / "logs"
    logs.write_scalars(log_dir / "train", 10, loss=1.0)
    logs.write_scalars(log_dir / "train", 20, loss=2.0)
    cut = sorted((log_dir / "train").iterdir())[-1]
    cut.write_bytes(cut.read_bytes()[:-7])  # a kill in the middle of writing the last record
    logs.write_scalars(log_dir / "validation", 30, loss=3.0)
    logs.trim(log_dir, step=20)
    assert scalars(log_dir / "train", "loss") == {10: 1.0}
    assert "loss" not in events(log_dir / "validation")
    assert not [p for p in log_dir.rglob("*") if p.name.startswith(".")]


@pytest.mark.filterwarnings("ignore:currentThread:DeprecationWarning")  # KerasTuner 1.4.8's
@pytest.mark.filterwarnings("ignore:getName:DeprecationWarning")
def test_every_tune_trial_logs_its_training_dev_loss_and_hyperparameters(tiny_names_file, tmp_path):
    out = tmp_path / "tuning"
    (out / "logs" / "stale").mkdir(parents=True)  # an earlier search's: replaced
    manifest.write(out, "tune")
    result = tune(tiny_names_file, out, max_trials=2, max_minutes=10, steps=10, seed=1, algorithm="random",
                  log=quiet)
    trials = sorted(p.name for p in (out / "logs").iterdir())
    assert trials == sorted(row["trial"] for row in result.rows) and len(trials) == 2
    for row in result.rows:
        trial_dir = out / "logs" / row["trial"] / "execution0"
        train_events = events(trial_dir / "train")
        assert {"batch_loss", "batch_learning_rate", "epoch_loss", "epoch_learning_rate",
                "config"} <= set(train_events)
        assert f"| n_hidden | {row['n_hidden']} |" in train_events["config"][0][1].item().decode()
        assert max(scalars(trial_dir / "train", "batch_loss")) == 10
        dev_loss = scalars(trial_dir / "validation", "epoch_loss")
        assert dev_loss == {10: pytest.approx(row["dev_loss"], rel=1e-6)}
        hparams = EventAccumulator(str(trial_dir))
        hparams.Reload()
        assert "_hparams_/session_start_info" in hparams.Tags()["tensors"]  # TensorBoard's HParams tab
        assert (trial_dir / "train" / "metadata.tsv").is_file()


def test_lr_find_logs_the_range_test_curve(tiny_names_file, tmp_path):
    from kmlp.data.pipeline import NamesData

    config = Config(block_size=3, n_embd=4, n_hidden=16, batch_size=8, lr=0.1)
    data = NamesData.for_config(tiny_names_file, config)
    out = tmp_path / "lr"
    result, csv_path, _ = range_test(config, data, num_steps=40, out_dir=out)
    result, csv_path, _ = range_test(config, data, num_steps=40, out_dir=out)  # again: replaced, not added
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    logged = events(out / "logs")
    for tag, column in [("range_test/loss", "loss"), ("range_test/smoothed_loss", "smoothed_loss"),
                        ("range_test/learning_rate", "lr")]:
        values = scalars(out / "logs", tag)
        assert sorted(values) == [int(row["step"]) for row in rows] == list(range(len(result.rates)))
        assert [values[int(row["step"])] for row in rows] == pytest.approx(
            [float(row[column]) for row in rows], rel=1e-5)
    suggestion = logged["range_test/suggestion"][0][1].item().decode()
    assert f"suggested lr {result.suggested_lr:.3g}" in suggestion
    assert "| batch_size | 8 |" in logged["config"][0][1].item().decode()


def test_watch_hint_names_the_live_and_the_saved_logs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "saved_models" / "default"
    hint = logs.watch_hint(backups.backup_dir(out) / "logs", out)
    assert hint == ("TensorBoard logs in saved_models/.default.backup/logs while training, then in "
                    "saved_models/default/logs; watch with: tensorboard --logdir saved_models")


# ---------------------------------------------------------------------------------------------
# TensorBoard itself, as `tensorboard --logdir saved_models` runs it


def get(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def test_tensorboard_serves_saved_and_live_runs_and_the_projector(tiny_run_dir, tmp_path):
    run_dir = tiny_run_dir
    models = tmp_path / "saved_models"
    shutil.copytree(run_dir, models / "tiny")
    shutil.copytree(run_dir / "logs", backups.backup_dir(models / "live") / "logs")  # a run in training
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(models), "--host", "127.0.0.1",
         "--port", "0", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        address, deadline = None, time.monotonic() + 180
        while address is None and time.monotonic() < deadline and server.poll() is None:
            if select.select([server.stderr], [], [], 1.0)[0]:  # never blocks past the deadline
                found = re.search(r"(http://127\.0\.0\.1:\d+)/", server.stderr.readline())
                address = found and found.group(1)
        assert address, "TensorBoard did not start"
        runs = []
        while time.monotonic() < deadline and len(runs) < 4:
            runs = json.loads(get(f"{address}/data/runs"))
            time.sleep(0.5)
        assert sorted(runs) == [".live.backup/logs/train", ".live.backup/logs/validation",
                                "tiny/logs/train", "tiny/logs/validation"]

        info = json.loads(get(f"{address}/data/plugin/projector/info?run=tiny/logs/train"))
        assert [e["tensorName"] for e in info["embeddings"]] == [EMBEDDING_TENSOR]
        query = f"run=tiny/logs/train&name={EMBEDDING_TENSOR}"
        labels = get(f"{address}/data/plugin/projector/metadata?{query}").decode().split("\n")
        run = load_run(run_dir)
        assert labels[:len(run.vocab)] == ["."] + run.vocab.chars
        table = np.frombuffer(get(f"{address}/data/plugin/projector/tensor?{query}"), dtype=np.float32)
        np.testing.assert_array_equal(table, run.model.get_layer("embedding").get_weights()[0].ravel())

        shutil.rmtree(backups.backup_dir(models / "live"))  # that run saved: its backup is deleted
        while time.monotonic() < deadline and len(runs) > 2:
            runs = json.loads(get(f"{address}/data/runs"))
            time.sleep(0.5)
        assert sorted(runs) == ["tiny/logs/train", "tiny/logs/validation"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        server.stderr.close()
