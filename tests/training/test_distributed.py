"""Multi-worker training (kmlp.training.cluster, kmlp.training.distributed): TF_CONFIG checked before TensorFlow, where
each worker keeps its files, the training loop against model.fit, and real worker processes on
127.0.0.1 that train as one process would and resume after being killed. Also what a GPU machine
changes (the gpu extra, the thread rule), checked on this CPU machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import NAMES_RUN_FLAGS, ROOT, TINY_WORDS

from kmlp import errors
from kmlp.config import Config
from kmlp.data.pipeline import NamesData
from kmlp.errors import ConfigError, RunError
from kmlp.runs import folders, lock, rundir
from kmlp.training import backup as backups
from kmlp.training.cluster import read_tf_config, task_in
from kmlp.training.distributed import start_of_all

QUIET = dict(verbose=0, log=lambda *_: None)


def tf_config(index: int, workers=("127.0.0.1:2222", "127.0.0.1:2223"), kind="worker", **cluster) -> str:
    return json.dumps({"cluster": {"worker": list(workers), **cluster}, "task": {"type": kind, "index": index}})


# ---------------------------------------------------------------------------------------------
# TF_CONFIG and who writes what


def test_worker_0_is_the_chief_unless_the_cluster_names_one():
    first, second = read_tf_config(tf_config(0)), read_tf_config(tf_config(1))
    assert (first.chief, first.workers, second.chief, second.name) == (True, 2, False, "worker-1")
    with_chief = read_tf_config(tf_config(0, chief=["127.0.0.1:2224"]))
    assert not with_chief.chief and with_chief.name == "worker-0" and with_chief.workers == 3
    assert read_tf_config(tf_config(0, kind="chief", chief=["127.0.0.1:2224"])).chief
    assert task_in({"worker": ["a:1"]}, "worker", 0).chief


@pytest.mark.parametrize("text, needle", [
    ("", "TF_CONFIG environment variable, which is not set"),
    ("{cluster", "TF_CONFIG: not valid JSON"),
    ("[" * 100_000, "TF_CONFIG: not valid JSON (nested too deeply)"),
    ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "names no workers"),
    ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}}', "must be a list"),
    (tf_config(0, workers=["host1"]), "'host1' in cluster.worker is not a host:port"),
    (tf_config(0, workers=["h:1", "h:1"]), "h:1 is named twice"),
    (tf_config(2), "task.index must be from 0 to 1"),
    (tf_config(0, kind="ps"), "task.type must name a task of the cluster (worker), got 'ps'"),
    (tf_config(0, evaluator=["h:3"]), "chief and worker tasks only, not evaluator"),
    (tf_config(0, chief=["h:3", "h:4"]), "at most one chief"),
])
def test_a_bad_tf_config_is_one_line_naming_what_is_wrong(text, needle):
    with pytest.raises(ConfigError) as error:
        read_tf_config(text)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_the_command_checks_the_cluster_before_loading_tensorflow(tiny_names_file, tmp_path):
    script = textwrap.dedent("""
        import contextlib, io, json, os, sys
        from kmlp.cli.main import main
        results = []
        for tf_config, extra in json.loads(sys.argv[1]):
            os.environ.pop("TF_CONFIG", None)
            os.environ.update({"TF_CONFIG": tf_config} if tf_config else {})
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(["train", "--data", sys.argv[2], "--out", sys.argv[3], "--strategy",
                             "multi-worker", *extra])
            results.append([code, err.getvalue()])
        print(json.dumps({"results": results, "tensorflow": "tensorflow" in sys.modules}))
    """)
    cases = [(None, [], "the TF_CONFIG environment variable, which is not set"),
             ("{cluster", [], "TF_CONFIG: not valid JSON"),
             (tf_config(0), ["--devices", "2"], "--devices applies to --strategy mirrored")]
    done = subprocess.run([sys.executable, "-c", script, json.dumps([case[:2] for case in cases]),
                           str(tiny_names_file), str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KMLP_TF_LOGS": "1"})  # stderr left where redirected
    report = json.loads(done.stdout)
    for (code, err), (_, _, needle) in zip(report["results"], cases):
        assert code == 2 and err.startswith("kmlp: error: ") and needle in err and err.count("\n") == 1, err
    assert report["tensorflow"] is False and not (tmp_path / "run").exists()


def test_workers_sharing_a_folder_each_lock_and_back_up_their_own(tmp_path):
    out = tmp_path / "run"
    with lock.RunLock(out), lock.RunLock(out, "worker-1"):
        with pytest.raises(errors.RunError, match="in use by another kmlp process"):
            lock.RunLock(out, "worker-1").__enter__()
    assert folders.beside(out, "lock", "worker-1") == tmp_path / ".run.worker-1.lock"
    assert backups.Backup(out).path == tmp_path / ".run.backup"
    assert backups.Backup(out, "worker-1").path == tmp_path / ".run.worker-1.backup"


def a_backup_two_epochs_in(tmp_path):
    """A backup after epoch 2 of 5-step epochs: weights and metadata, the epoch before as *.bkp."""
    backup = backups.Backup(tmp_path / "run", "worker-1")
    backup.path.mkdir()
    for suffix, epoch in (("", 2), (".bkp", 1)):
        (backup.path / f"{backups.WEIGHTS_FILE}{suffix}").write_text(f"weights {epoch}")
        (backup.path / f"{backups.METADATA_FILE}{suffix}").write_text(json.dumps({"epoch": epoch, "batch": 0}))
    backup.history.write_text("epoch,loss\n0,3.0\n1,2.5\n")
    backup.curve.write_text("step,loss,lr\n5,3.0,0.1\n10,2.5,0.1\n")
    return backup


def test_a_worker_one_epoch_ahead_goes_back_to_the_epoch_every_worker_has(tmp_path):
    backup = a_backup_two_epochs_in(tmp_path)
    assert not backup.go_back(3, 15)  # not the epoch before the last: nothing changes
    assert backups.epoch_of(backup.path / backups.METADATA_FILE) == 2
    assert backup.go_back(1, 5)
    assert backups.epoch_of(backup.path / backups.METADATA_FILE) == 1
    assert (backup.path / backups.WEIGHTS_FILE).read_text() == "weights 1"
    assert backup.history.read_text() == "epoch,loss\n0,3.0\n"
    assert backup.curve.read_text() == "step,loss,lr\n5,3.0,0.1\n"
    assert backup.go_back(0, 0) and not (backup.path / backups.WEIGHTS_FILE).exists()
    assert backup.history.read_text() == "epoch,loss\n"


PLAN = {"steps": 25, "steps_per_call": 5, "calls_per_epoch": 1, "epochs": 5}


def test_workers_start_together_from_the_last_epoch_all_backed_up(tmp_path):
    backup = a_backup_two_epochs_in(tmp_path)
    quiet = lambda *_: None  # noqa: E731
    assert start_of_all(backup, 2, [(2, 7), (2, 7)], PLAN, quiet) == 2
    with pytest.raises(RunError, match="the workers were given different trainings"):
        start_of_all(backup, 2, [(2, 7), (2, 8)], PLAN, quiet)
    with pytest.raises(RunError, match="holds epoch 2, while another worker's backup holds epoch 0"):
        start_of_all(backup, 2, [(2, 7), (0, 7)], PLAN, quiet)
    assert backups.epoch_of(backup.path / backups.METADATA_FILE) == 2  # refused: nothing changed
    assert start_of_all(backup, 2, [(1, 7), (2, 7)], PLAN, quiet) == 1
    assert backups.epoch_of(backup.path / backups.METADATA_FILE) == 1


# ---------------------------------------------------------------------------------------------
# The training loop, in this process (a MultiWorkerMirroredStrategy of one worker)


def test_the_multi_worker_loop_trains_exactly_as_fit_does(tmp_path, monkeypatch):
    """Batch normalisation, dropout, R-Drop and chunks of 20 steps: the same losses, rates and
    weights as model.fit, through the same callbacks, backups and run directory."""
    import tensorflow as tf

    from kmlp.training.train import train

    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = Config(block_size=3, n_embd=4, n_hidden=16, norm="batch", dropout=0.1, rdrop=1.0,
                    batch_size=8, steps=60, steps_per_call=20, optimizer="adam", lr=0.01, decay_at=[40],
                    jit_compile=False)
    data = NamesData.from_words(TINY_WORDS, block_size=3)
    fitted = train(config, data=data, out_dir=tmp_path / "fit", **QUIET)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    looped = train(config, data=data, out_dir=tmp_path / "loop", strategy=strategy, **QUIET)
    assert len(fitted.history["loss"]) == 3  # (the means differ in float32 rounding only)
    assert looped.history["loss"] == pytest.approx(fitted.history["loss"], rel=1e-6)
    assert looped.history["lr"] == fitted.history["lr"] == pytest.approx([0.01, 0.01, 0.001])
    assert looped.history["val_loss"] == pytest.approx(fitted.history["val_loss"], rel=1e-6)
    for mine, theirs in zip(looped.model.weights, fitted.model.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    for run in ("fit", "loop"):
        assert (tmp_path / run / "model.keras").is_file() and not (tmp_path / f".{run}.backup").exists()
    rows = (tmp_path / "loop" / "history.csv").read_text().splitlines()
    assert rows[0].split(",") == ["epoch", "loss", "lr", "seconds", "val_loss"] and len(rows) == 4
    with pytest.raises(ConfigError, match="--minutes plans the steps from one process's speed"):
        train(config.replace(minutes=1.0), data=data, out_dir=tmp_path / "budget", strategy=strategy, **QUIET)
    assert not (tmp_path / "budget" / "model.keras").exists()


def test_the_loop_stops_where_a_callback_says(monkeypatch):
    import keras
    import tensorflow as tf

    from kmlp.training.setup import prepare

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.hooks = []

        def on_train_batch_end(self, batch, logs=None):
            self.hooks.append(("batch", batch, sorted(logs)))

        def on_epoch_end(self, epoch, logs=None):
            self.hooks.append(("epoch", epoch, sorted(logs)))
            self.model.stop_training = True

    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = Config(block_size=3, n_embd=4, n_hidden=8, batch_size=8, steps=60, steps_per_call=10,
                    decay_at=[])
    setup = prepare(config, NamesData.from_words(TINY_WORDS, block_size=3),
                    strategy=tf.distribute.MultiWorkerMirroredStrategy(), log=lambda *_: None)
    stop = StopAfterFirstEpoch()
    history = setup.fit([stop])
    assert setup.plan.epochs == 3 and setup.plan.calls_per_epoch == 2
    assert stop.hooks == [("batch", 0, ["loss"]), ("batch", 1, ["loss"]), ("epoch", 0, ["loss", "lr", "val_loss"])]
    assert len(history.history["loss"]) == 1 and int(setup.model.optimizer.iterations.numpy()) == 20


# ---------------------------------------------------------------------------------------------
# Real workers: two processes on 127.0.0.1, each `kmlp train --strategy multi-worker`

# `kmlp ARGS` as a user runs it, keeping the trained weights (WEIGHTS, npz) to compare the workers;
# with SIGNAL_AT="E SIGNAME" the worker sends itself that signal once epoch E is backed up.
WORKER = """
import os, signal, sys
from kmlp.utils.quiet import silence_tensorflow
silence_tensorflow()
import keras
import numpy as np
from kmlp.cli import main as cli
from kmlp.training import train as training

class SignalAtEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        at, name = os.environ.get("SIGNAL_AT", "-1 SIGKILL").split()
        if epoch == int(at):
            os.kill(os.getpid(), getattr(signal, name))

def train_and_keep_weights(*args, **kwargs):
    result = real_train(*args, callbacks=[SignalAtEpoch()], **kwargs)
    np.savez(os.environ["WEIGHTS"], *[w.numpy() for w in result.model.weights])
    return result

real_train, training.train = training.train, train_and_keep_weights
sys.exit(cli.main(sys.argv[1:]))
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextmanager
def two_workers(tmp_path, args, timeout: float, signal_at: dict | None = None):
    """Start worker 0 and 1 of a cluster on free 127.0.0.1 ports (``signal_at``: {worker: "EPOCH
    SIGNAME"}, a signal a worker sends itself); yields a function that waits for both (at most
    ``timeout`` seconds in all) and returns their exit codes and output. Whatever happens, no worker
    outlives the block."""
    cluster = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs, logs = [], []
    try:
        for index in range(2):
            logs.append(tmp_path / f"worker{index}.log")
            worker_env = {**os.environ, "TF_CONFIG": tf_config(index, cluster),
                          "WEIGHTS": str(tmp_path / f"weights{index}.npz"),
                          "SIGNAL_AT": (signal_at or {}).get(index, "-1 SIGKILL")}
            worker_env.pop("KMLP_TF_LOGS", None)
            with open(logs[-1], "w") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", WORKER, "train", "--strategy", "multi-worker", *map(str, args)],
                    cwd=ROOT, env=worker_env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout

        def wait():
            codes = [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in procs]
            return codes, [path.read_text(errors="replace") for path in logs]

        yield wait
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def same_weights(tmp_path) -> bool:
    first, second = (np.load(tmp_path / f"weights{i}.npz") for i in range(2))
    return len(first.files) > 0 and all(np.array_equal(first[k], second[k]) for k in first.files)


def left_beside(out) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.integration
def test_two_workers_end_with_one_model_as_good_as_one_process(names_path, names_run, tmp_path):
    """The training of names_run (one process), by two workers."""
    out = tmp_path / "run"
    args = ["--data", names_path, *NAMES_RUN_FLAGS, "--samples", "0", "--quiet", "--out", out]
    with two_workers(tmp_path, args, timeout=300) as wait:
        codes, logs = wait()
    assert codes == [0, 0], logs
    assert "2 devices" in logs[0] and f"worker-1 done; the chief saves the run to {out}" in logs[1]
    assert same_weights(tmp_path)  # batch-norm statistics included
    assert rundir.load_run(out).metrics["steps"] == 300 and left_beside(out) == []
    dev = {name: rundir.load_run(run).metrics["dev_loss"] for name, run in (("workers", out), ("one", names_run[0]))}
    assert all(2.0 < loss < 2.8 for loss in dev.values()) and abs(dev["workers"] - dev["one"]) < 0.05, dev


@pytest.mark.integration
def test_workers_stop_together_and_resume_after_a_kill(tiny_names_file, tmp_path):
    """SIGTERM to worker 1 stops both after the same epoch; resumed, worker 1 is killed (kill -9)
    after backing up epoch 3 and worker 0 stops with one line. Worker 1's backup is then set back to
    epoch 2, as when a kill comes between the two workers' saves: resumed again, both go on from
    epoch 2 and end with one model."""
    out = tmp_path / "run"
    args = ["--data", tiny_names_file, "--block-size", "3", "--n-embd", "4", "--n-hidden", "16",
            "--norm", "batch", "--dropout", "0.1", "--batch-size", "8", "--steps", "120",
            "--steps-per-call", "20", "--optimizer", "adam", "--lr", "0.01", "--decay-at", "none",
            "--samples", "0", "--quiet", "--out", out]  # 6 epochs of one call
    with two_workers(tmp_path, args, timeout=240, signal_at={1: "0 SIGTERM"}) as wait:
        codes, logs = wait()
    assert codes == [130, 143], logs
    assert all("the same command with --resume continues from the last completed epoch" in log for log in logs)
    with two_workers(tmp_path, [*args, "--resume"], timeout=240, signal_at={1: "2 SIGKILL"}) as wait:
        codes, logs = wait()
    assert codes == [2, -signal.SIGKILL], logs
    assert all(re.search(r"resuming from .*backup: 1 of 6 epochs done", log) for log in logs), logs
    assert logs[0].strip().splitlines()[-1].startswith(
        "kmlp: error: another worker stopped or cannot be reached ("), logs[0]
    behind = backups.backup_dir(out, "worker-1")
    for name in (backups.WEIGHTS_FILE, backups.METADATA_FILE):
        shutil.copyfile(behind / f"{name}.bkp", behind / name)
    with two_workers(tmp_path, [*args, "--resume"], timeout=240) as wait:
        codes, logs = wait()
    assert codes == [0, 0], logs
    assert "going back to epoch 2, the last one every worker backed up" in logs[0]
    assert same_weights(tmp_path)
    metrics = rundir.load_run(out).metrics
    assert metrics["resumed_at_step"] == 40 and metrics["steps"] == 120
    assert len((out / "history.csv").read_text().splitlines()) == 1 + 6
    assert left_beside(out) == []


# ---------------------------------------------------------------------------------------------
# GPU readiness, checked without a GPU


def test_the_gpu_extra_installs_the_same_tensorflow_with_cuda():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    tensorflow = next(d for d in project["dependencies"] if d.startswith("tensorflow=="))
    assert project["optional-dependencies"]["gpu"] == [tensorflow.replace("tensorflow", "tensorflow[and-cuda]")]


def test_one_thread_per_op_is_a_cpu_rule(monkeypatch):
    import tensorflow as tf

    from kmlp.training.setup import set_op_threads

    calls = []
    monkeypatch.setattr(tf.config.threading, "get_intra_op_parallelism_threads", lambda: 0)
    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads", calls.append)
    set_op_threads(Config(), vocab_size=27)  # the lecture's model on this machine, which has no GPU
    assert calls == [1] and tf.config.list_physical_devices("GPU") == []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    set_op_threads(Config(), vocab_size=27)
    assert calls == [1]  # with a GPU, threads are left as TensorFlow sets them


def test_strategies_by_name_without_a_gpu():
    from kmlp.training.setup import make_strategy

    mirrored = make_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 1 and "CPU" in mirrored.extended.worker_devices[0]
    with pytest.raises(ValueError, match="default, mirrored or multi-worker"):
        make_strategy("ring")
