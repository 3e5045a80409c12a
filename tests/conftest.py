"""Shared fixtures: tiny synthetic word lists for unit tests, the real names.txt for integration tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kmlp.utils.quiet import silence_tensorflow

ROOT = Path(__file__).resolve().parent.parent
SHARED_NAMES = ROOT.parent / "shared" / "data" / "names.txt"

TINY_WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia", "harper", "evelyn",
              "abigail", "emily", "ella", "elizabeth", "camila", "luna", "sofia", "avery", "mila",
              "aria", "scarlett", "penelope", "layla", "chloe", "victoria", "madison", "eleanor"]

silence_tensorflow()


@pytest.fixture(scope="session")
def names_path() -> Path:
    """The real names.txt beside the project. Missing is a failure, never a skip (CI always has it)."""
    if not SHARED_NAMES.is_file():
        pytest.fail(f"{SHARED_NAMES} is missing: integration tests need the shared names.txt")
    return SHARED_NAMES


@pytest.fixture
def tiny_words() -> list[str]:
    return list(TINY_WORDS)


@pytest.fixture
def tiny_names_file(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(TINY_WORDS) + "\n", encoding="utf-8")
    return path


def train_tiny_run(root: Path, steps_per_call: int = 0, **changes):
    """Train a small model on TINY_WORDS for 60 steps (in calls of ``steps_per_call``; 0: as kmlp
    chooses; ``changes`` to its configuration) into ``root/run`` and load it back."""
    from kmlp.config import Config
    from kmlp.runs.rundir import load_run
    from kmlp.training.train import train

    words = root / "tiny.txt"
    words.write_text("\n".join(TINY_WORDS) + "\n", encoding="utf-8")
    config = Config(**{**dict(block_size=3, n_embd=4, n_hidden=16, batch_size=8, steps=60, decay_at=[30], lr=0.3,
                              steps_per_call=steps_per_call, early_stopping=0), **changes})
    train(config, data_path=words, out_dir=root / "run", verbose=0, log=lambda *_: None)
    return load_run(root / "run")


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """A run of :func:`train_tiny_run` in calls of 5 steps (4 evaluations of 3 calls), trained once
    for the session: read it as it is, and change only a copy of it (:func:`copy_run`)."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny"), steps_per_call=5).path


# The lecture's part 5 model (two levels of two positions), tiny: a flat run's tests repeated on it.
HIERARCHICAL = dict(arch="hierarchical", block_size=4, n_layers=2, norm="batch", init="fan_in", norm_momentum=0.9,
                    norm_epsilon=1e-5)


@pytest.fixture(scope="session")
def hierarchical_run_dir(tmp_path_factory) -> Path:
    """A run of :func:`train_tiny_run` of the :data:`HIERARCHICAL` model, trained once for the session
    (read it as it is; change only a copy of it)."""
    return train_tiny_run(tmp_path_factory.mktemp("hierarchical"), steps_per_call=5, **HIERARCHICAL).path


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


# A small model with batch norm, dropout and R-Drop that learns names.txt in seconds: the training that
# the integration tests share (names_run) or repeat on other strategies (mirrored, multi-worker).
NAMES_RUN_FLAGS = ["--block-size", "3", "--n-embd", "8", "--n-hidden", "32", "--norm", "batch", "--dropout", "0.1",
                   "--rdrop", "1", "--batch-size", "64", "--steps", "300", "--steps-per-call", "100",
                   "--optimizer", "adam", "--lr", "0.01", "--decay-at", "none"]


@pytest.fixture(scope="session")
def names_run(names_path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``kmlp train NAMES_RUN_FLAGS --samples 5`` on the real names.txt, in a fresh process as a user
    runs it, once for the session: (the run folder, the finished process)."""
    out = tmp_path_factory.mktemp("names") / "run"
    trained = run_cli("train", "--data", names_path, "--out", out, *NAMES_RUN_FLAGS, "--samples", "5")
    if trained.returncode:
        pytest.fail(f"kmlp train on names.txt failed:\n{trained.stderr[-3000:]}")
    return out, trained


def run_cli(*args, cwd=None, timeout=600, env_extra=None) -> subprocess.CompletedProcess:
    """Run ``kmlp ARGS`` in a fresh process, as a user would; returns the completed process."""
    env = {**os.environ, **(env_extra or {})}
    env.pop("KMLP_TF_LOGS", None)
    return subprocess.run([sys.executable, "-m", "kmlp", *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
