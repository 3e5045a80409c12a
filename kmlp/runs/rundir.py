"""A run directory on disk: its files, and reading it back with checks.

    DIR/model.keras       the Keras model (loaded with safe_mode: no code runs at load time)
    DIR/config.json       {"config": {...}, "vocab": {...}, "data": "/abs/path", "data_sha256": ..., "preset": ...,
                          "started_from": {"run": "/abs/path", "weights_sha256": ...} after --from}
    DIR/metrics.json      train_loss, dev_loss, steps, seconds, params, ... (+ test_loss after evaluate)
    DIR/evaluations.json  losses measured on other names files, each with the file and its SHA-256
    DIR/history.csv       one row per evaluation during training
    DIR/loss.png          the training curve (log10 loss against step, dev loss marked)
    DIR/embedding.png     the character embeddings in two dimensions
    DIR/logs/             TensorBoard logs of the training (see kmlp.training.logs)
    DIR/export/N/         SavedModels written by ``kmlp export`` (see kmlp.export); kept when the run
                          is trained again
    DIR/litert/N/         LiteRT models written by ``kmlp export --format litert``; kept likewise
    DIR/kmlp-manifest.json   every file and folder above, with sizes and hashes (see kmlp.runs.manifest):
                          training the run again replaces it only if nothing else is there, and
                          deletes only what it lists

Beside DIR, while a process works on it: ``.DIR.lock`` (who holds the run), ``.DIR.backup/`` (the
last completed epoch of a training and its TensorBoard logs so far, see :mod:`kmlp.training.backup`)
and ``.DIR.partial-*`` (a run being written); a worker of a multi-worker training other than the
chief, which never writes DIR, keeps its own ``.DIR.worker-1.lock`` and ``.DIR.worker-1.backup/``
(see :func:`beside`). A lock and a backup are known by their contents, never by their names alone.
Files and folders are created with the permissions the user's umask gives.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kmlp.config import Config
from kmlp.data.fetch import NAMES_SHA256, resolve_data_path
from kmlp.data.vocab import Vocabulary
from kmlp.errors import DataError, RunError
from kmlp.runs import manifest
from kmlp.utils import jsonfile
from kmlp.utils.atomic import write_json

MODEL_FILE = "model.keras"


CONFIG_FILE = "config.json"


METRICS_FILE = "metrics.json"


EVALUATIONS_FILE = "evaluations.json"


HISTORY_FILE = "history.csv"


EXPORT_DIR = "export"


LOGS_DIR = "logs"


LITERT_DIR = "litert"


BACKUP_IDENTITY_FILE = "run.json"  # in a training's backup: which training it belongs to


# What outlives training the run again: exported versions may be in use by a server or an app.
KEPT_ON_RETRAINING = (EXPORT_DIR, LITERT_DIR)


@dataclass
class Run:
    """A trained model with everything needed to use it."""

    path: Path
    model: object
    config: Config
    vocab: Vocabulary
    metrics: dict
    info: dict  # the whole config.json (data path, preset, ...)

    @property
    def data_path(self) -> Path | None:
        """The names file the model was trained on, as recorded (absolute for runs written now); if
        that file is missing here but its recorded SHA-256 is names.txt's, the verified names.txt of
        this machine (a run trained elsewhere, such as the shipped ``saved_models/names-base``)."""
        data = self.info.get("data")
        if not data:
            return None
        if not Path(data).exists() and self.info.get("data_sha256") == NAMES_SHA256:
            return resolve_data_path()
        return Path(data)

    def own_data_path(self) -> Path:
        """:attr:`data_path`, or the :class:`RunError` saying the run names no data file."""
        path = self.data_path
        if path is None:
            raise RunError(f"{self.path / CONFIG_FILE} names no data file; pass --data PATH")
        return path

    def splits(self, data_path=None) -> tuple[dict | None, str | None]:
        """``(words, None)``: the train/dev/test names of ``data_path`` (default: the file the model
        was trained on) as this run splits them; or ``(None, why not)`` when the run's own file cannot
        be read. A ``data_path`` asked for explicitly that cannot be read raises its DataError."""
        from kmlp.data.pipeline import NamesData

        try:
            path = data_path or self.own_data_path()
        except RunError as e:
            return None, str(e)
        if not data_path and _is_stream(path):  # read once, when the run was trained: reading it again would wait
            return None, f"the run was trained on {path}, a pipe or device that is not read again; pass --data PATH"
        try:
            return NamesData.for_config(path, self.config, vocab=self.vocab).words, None
        except DataError as e:
            if data_path:
                raise
            return None, f"the run was trained on {path}, which cannot be read now ({e}); pass --data PATH"


def _is_stream(path) -> bool:
    """Whether ``path`` is a FIFO, a socket or a device (standard input is one of them)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


def default_run_dir(preset_name: str) -> Path:
    """Where ``kmlp train`` writes a run when no ``--out`` is given: ``saved_models/<preset>``."""
    return Path("saved_models") / preset_name


def read_json(path: Path, expect: type = dict):
    """One of a run's JSON files (or its backup's), a JSON object unless ``expect`` says otherwise;
    anything else is a :class:`RunError` naming the file (see :func:`kmlp.utils.jsonfile.read_json`)."""
    return jsonfile.read_json(path, expect=expect, error=RunError)


def update_metrics(run_dir: Path, **values) -> dict:
    """Add ``values`` to the run's metrics.json (and its manifest)."""
    path = Path(run_dir) / METRICS_FILE
    metrics = read_json(path) if path.exists() else {}
    metrics.update(values)
    write_json(path, metrics)
    manifest.record_files(run_dir, METRICS_FILE)
    return metrics


def add_evaluation(run_dir: Path, record: dict) -> list:
    """Append ``record`` (a loss measured on a names file other than the run's own) to evaluations.json."""
    path = Path(run_dir) / EVALUATIONS_FILE
    records = read_json(path, expect=list) if path.exists() else []
    records.append(record)
    write_json(path, records)
    manifest.record_files(run_dir, EVALUATIONS_FILE)
    return records


def _configuration(info: dict, source: Path) -> tuple[Config, Vocabulary]:
    """The configuration and vocabulary a run's config.json holds, or RunError naming it."""
    try:
        values = info.get("config")
        if not isinstance(values, dict):
            raise TypeError("no \"config\" object")
        if not isinstance(info.get("data"), (str, type(None))):
            raise TypeError("\"data\" is not the path of a names file")
        if "split_seed" not in values and "seed" in values:
            values = {**values, "split_seed": values["seed"]}  # runs from before split_seed split by their seed
        config = Config.from_dict(values, source=str(source))
        vocab = Vocabulary.from_json(info.get("vocab"))
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError
        raise RunError(f"{source}: not a kmlp configuration ({str(e).removeprefix(f'{source}: ')})") from None
    return config, vocab


def read_run_config(run_dir: str | os.PathLike) -> tuple[Config, Vocabulary, dict]:
    """``(config, vocab, info)`` of a run directory, checked as far as can be without loading
    TensorFlow (its config.json, and a model.keras that is a zip archive); else :class:`RunError`."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    model_path = path / MODEL_FILE
    if not model_path.exists() or not (path / CONFIG_FILE).exists():
        raise RunError(f"{path}: holds no kmlp model (expected {MODEL_FILE} and {CONFIG_FILE})")
    info = read_json(path / CONFIG_FILE)
    config, vocab = _configuration(info, path / CONFIG_FILE)
    if not model_path.is_file():
        raise RunError(f"{model_path}: not a regular file, so not a Keras archive")
    if not zipfile.is_zipfile(model_path):
        raise RunError(f"{model_path}: corrupt or truncated (not a Keras archive)")
    return config, vocab, info


def load_run(run_dir: str | os.PathLike, compile: bool = False) -> Run:
    """Load a run directory written by ``kmlp train``, checking that its files agree.

    The model is loaded with Keras's ``safe_mode``: a file that would run code when loaded (a
    ``Lambda`` layer, say) is refused. A missing, damaged or mismatched file raises :class:`RunError`.
    """
    path = Path(run_dir)
    config, vocab, info = read_run_config(path)
    model_path = path / MODEL_FILE
    import keras  # only now: the checks above answer without loading TensorFlow

    from kmlp.models import mlp  # noqa: F401  registers CharMLP for loading

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
