"""A run directory on disk, written so that it is never half-written, and read back with checks.

    DIR/model.keras     the Keras model (loaded with safe_mode: no code runs at load time)
    DIR/config.json     {"config": {...}, "vocab": {...}, "data": "...", "preset": ...}
    DIR/metrics.json    train_loss, dev_loss, steps, seconds, params, ... (+ test_loss after evaluate)
    DIR/history.csv     one row per evaluation during training
    DIR/loss.png        the training curve (log10 loss against step, dev loss marked)
    DIR/embedding.png   the character embeddings in two dimensions
    DIR/export/N/       SavedModels written by ``kmlp export`` (see kmlp.export)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import Config, ConfigError
from .data import Vocabulary

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"


class RunError(ValueError):
    """A run directory is missing, incomplete or inconsistent; the message names the path."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was saved."""


@dataclass
class Run:
    """A trained model with everything needed to use it."""

    path: Path
    model: object
    config: Config
    vocab: Vocabulary
    metrics: dict
    info: dict  # the whole config.json (data path, preset, ...)


def staging_dir(out_dir: Path) -> Path:
    """A fresh, hidden folder beside ``out_dir`` to write a run into before it is moved into place."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))


def backup_dir(out_dir: Path) -> Path:
    """Where training keeps its last completed epoch until the run is published: a hidden folder
    beside ``out_dir`` (``saved_models/.default.backup`` for ``saved_models/default``)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.backup"


def publish(staging: Path, out_dir: Path) -> Path:
    """Move a completely written run into place, replacing any earlier run at ``out_dir``.

    Both moves are renames within one folder, so a reader sees either the old run or the new one;
    the old one is deleted only once the new one is in place.
    """
    out_dir = Path(out_dir)
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rmdir(old)
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


@contextmanager
def atomic_open(path, mode: str = "w"):
    """Open a temporary file beside ``path`` for writing; once the block ends without error it is
    renamed to ``path``, otherwise removed. So ``path`` is always whole or untouched.

    >>> with atomic_open(run_dir / "notes.txt") as f:
    ...     f.write("...")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all; see :func:`atomic_open`."""
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: Path, obj) -> None:
    """Write JSON whole or not at all; see :func:`atomic_open`."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None


def update_metrics(run_dir: Path, **values) -> dict:
    path = Path(run_dir) / METRICS_FILE
    metrics = read_json(path) if path.exists() else {}
    metrics.update(values)
    write_json(path, metrics)
    return metrics


def load_run(run_dir: str | os.PathLike, compile: bool = False) -> Run:
    """Load a run directory written by ``kmlp train``, checking that its files agree.

    The model is loaded with Keras's ``safe_mode``: a file that would run code when loaded (a
    ``Lambda`` layer, say) is refused. A missing, damaged or mismatched file raises :class:`RunError`.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    model_path = path / MODEL_FILE
    if not model_path.exists() or not (path / CONFIG_FILE).exists():
        raise RunError(f"{path}: holds no kmlp model (expected {MODEL_FILE} and {CONFIG_FILE})")
    info = read_json(path / CONFIG_FILE)
    try:
        config = Config.from_dict(info["config"], source=str(path / CONFIG_FILE))
        vocab = Vocabulary.from_json(info["vocab"])
    except (KeyError, TypeError, ConfigError, ValueError) as e:
        raise RunError(f"{path / CONFIG_FILE}: not a kmlp configuration ({e})") from None
    if not zipfile.is_zipfile(model_path):
        raise RunError(f"{model_path}: corrupt or truncated (not a Keras archive)")
    import keras  # only now: the checks above answer without loading TensorFlow

    from . import model as _model  # noqa: F401  registers CharMLP for loading

    try:
        model = keras.saving.load_model(model_path, compile=compile, safe_mode=True)
    except Exception as e:  # Keras raises many types for damaged archives
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{model_path}: cannot be loaded ({first})") from None
    in_shape = tuple(model.input_shape)
    out_shape = tuple(model.output_shape)
    if in_shape[-1] != config.block_size or out_shape[-1] != len(vocab):
        raise RunError(
            f"{path}: model and configuration disagree (model takes {in_shape[-1]} characters and "
            f"predicts {out_shape[-1]} tokens; config.json says block_size {config.block_size} and a "
            f"vocabulary of {len(vocab)})")
    metrics_path = path / METRICS_FILE
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    return Run(path=path, model=model, config=config, vocab=vocab, metrics=metrics, info=info)
