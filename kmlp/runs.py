"""A run directory on disk: written so that it is never half-written, never written by two processes
at once, never put over files kmlp did not write, and read back with checks.

    DIR/model.keras       the Keras model (loaded with safe_mode: no code runs at load time)
    DIR/config.json       {"config": {...}, "vocab": {...}, "data": "/abs/path", "data_sha256": ..., "preset": ...}
    DIR/metrics.json      train_loss, dev_loss, steps, seconds, params, ... (+ test_loss after evaluate)
    DIR/evaluations.json  losses measured on other names files, each with the file and its SHA-256
    DIR/history.csv       one row per evaluation during training
    DIR/loss.png          the training curve (log10 loss against step, dev loss marked)
    DIR/embedding.png     the character embeddings in two dimensions
    DIR/logs/             TensorBoard logs of the training (see kmlp.logs)
    DIR/export/N/         SavedModels written by ``kmlp export`` (see kmlp.export); kept when the run
                          is trained again
    DIR/litert/N/         LiteRT models written by ``kmlp export --format litert``; kept likewise
    DIR/kmlp-manifest.json   every file and folder above, with sizes and hashes (see kmlp.manifest):
                          training the run again replaces it only if nothing else is there, and
                          deletes only what it lists

Beside DIR, while a process works on it: ``.DIR.lock`` (who holds the run), ``.DIR.backup/`` (the
last completed epoch of a training and its TensorBoard logs so far, see :mod:`kmlp.backup`) and ``.DIR.partial-*`` (a run being
written); a worker of a multi-worker training other than the chief, which never writes DIR, keeps
its own ``.DIR.worker-1.lock`` and ``.DIR.worker-1.backup/`` (see :func:`beside`). A lock and a
backup are known by their contents, never by their names alone. Files and folders are created with
the permissions the user's umask gives.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import manifest
from .atomic import atomic_open, link_or_copy, new_dir_mode, new_file_mode, write_json, write_text  # noqa: F401
from .config import Config, ConfigError
from .data import Vocabulary

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


class RunError(ValueError):
    """A run directory is missing, incomplete, inconsistent or cannot be written; the message names
    the path."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or blew up; nothing was saved."""


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
        """The names file the model was trained on, as recorded (absolute for runs written now)."""
        data = self.info.get("data")
        return Path(data) if data else None

    def splits(self, data_path=None) -> tuple[dict | None, str | None]:
        """``(words, None)``: the train/dev/test names of ``data_path`` (default: the file the model
        was trained on) as this run splits them; or ``(None, why not)`` when the run's own file cannot
        be read. A ``data_path`` asked for explicitly that cannot be read raises its DataError."""
        from .data import DataError, NamesData

        path = data_path or self.data_path
        if not path:
            return None, f"{self.path / CONFIG_FILE} names no data file; pass --data PATH"
        try:
            return NamesData.for_config(path, self.config, vocab=self.vocab).words, None
        except DataError as e:
            if data_path:
                raise
            return None, f"the run was trained on {path}, which cannot be read now ({e}); pass --data PATH"


# ---------------------------------------------------------------------------------------------
# Where a run may be written


def default_run_dir(preset_name: str) -> Path:
    """Where ``kmlp train`` writes a run when no ``--out`` is given: ``saved_models/<preset>``."""
    return Path("saved_models") / preset_name


def check_out_dir(out_dir, kind: str = "run", worker: str | None = None) -> Path:
    """Refuse, before any work, an output folder kmlp may not write: a file, the current folder or one
    holding it, a symbolic link, a folder holding anything its manifest does not list (at any depth,
    see :mod:`kmlp.manifest`), or a lock or backup beside it that kmlp did not write.

    ``out_dir`` may be new, empty, or hold ``kind`` (a key of :data:`kmlp.manifest.KINDS`) written by
    kmlp. Its parent must be writable. Returns the folder as an absolute path.
    """
    path = Path(os.path.abspath(out_dir))
    if path.is_symlink():
        raise RunError(f"{out_dir}: is a symbolic link; give the folder it points to ({path.resolve()})")
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise RunError(f"{out_dir}: is the current folder or holds it; give a folder of its own, "
                       f"e.g. {Path(out_dir) / 'run'}")
    if path.exists() and not path.is_dir():
        raise RunError(f"{out_dir}: is a file; kmlp writes {manifest.KINDS[kind]} into a folder of its own")
    try:
        if path.is_dir() and os.listdir(path):
            manifest.check_owned(path, kind)
    except manifest.NotOwned as e:
        raise RunError(str(e)) from None
    check_lock_file(beside(path, "lock", worker))
    if kind == "run":
        check_backup_dir(beside(path, "backup", worker))
    check_writable(path.parent)
    return path


def check_writable(folder) -> Path:
    """Create ``folder`` if needed and check that files can be created in it (RunError if not)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".kmlp-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunError(f"{folder}: cannot write there ({e.strerror or e})") from None
    return folder


def beside(out_dir, what: str, worker: str | None = None) -> Path:
    """A hidden path beside ``out_dir`` for ``what`` (``lock``, ``backup``): ``.DIR.lock`` for the
    process that writes the run, ``.DIR.worker-1.lock`` for a multi-worker training's ``worker``
    other than the chief (see :mod:`kmlp.cluster`), so that workers sharing a folder never collide."""
    out_dir = Path(os.path.abspath(out_dir))
    return out_dir.parent / ".".join(["", out_dir.name, *([worker] if worker else []), what])


def _read_small_json(path: Path, limit: int = 1 << 20):
    """The JSON in ``path``, read without following a symbolic link and at most ``limit`` bytes; None if
    it is anything else (a link, a folder, too large, not JSON)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        text = manifest.read_bounded(fd, limit + 1)
        return json.loads(text) if len(text) <= limit else None
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)


def is_backup_dir(path) -> bool:
    """Whether ``path`` is a backup kmlp made: a real folder whose identity file (see
    :mod:`kmlp.backup`) says which training it belongs to."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    identity = _read_small_json(path / BACKUP_IDENTITY_FILE)
    return isinstance(identity, dict) and "config" in identity and "plan" in identity


def check_backup_dir(path) -> None:
    """Refuse a file or folder where kmlp keeps a training's backup that is not a kmlp backup."""
    if os.path.lexists(path) and not is_backup_dir(path):
        raise RunError(f"{path}: kmlp keeps the backup of a training there, but this is not a kmlp "
                       f"backup; move it, or choose another --out")


def _is_lock_text(text) -> bool:
    return isinstance(text, dict) and {"pid", "command", "since"} <= set(text)


def check_lock_file(path) -> None:
    """Refuse a file (or link) where kmlp keeps a folder's lock that is not a kmlp lock."""
    if os.path.lexists(path) and not _is_lock_text(_read_small_json(path, 4096)):
        raise RunError(f"{path}: kmlp keeps its lock there, but this is not a kmlp lock; move it, "
                       f"or choose another folder")


class RunLock:
    """Only one kmlp process at a time writes a run (training, evaluating, exporting) or another output
    folder: an exclusive ``flock`` on a hidden file beside it, which the operating system releases when
    the process ends, however it ends, so a lock left by a dead process is taken over.

    >>> with RunLock("saved_models/default"):
    ...     ...  # a second process gets RunError naming this one's pid and command

    The lock file appears whole, already locked and naming its holder (it is written under a private
    name and hard-linked into place), so a file there that does not read as a kmlp lock is a user's
    and is refused, never overwritten or deleted; nor is a symbolic link ever followed. ``worker``
    names a multi-worker training's worker other than the chief: it locks its own file (:func:`beside`).
    """

    def __init__(self, out_dir, worker: str | None = None):
        self.out_dir = Path(os.path.abspath(out_dir))
        self.path = beside(out_dir, "lock", worker)
        self._fd = None

    def __enter__(self) -> "RunLock":
        check_writable(self.path.parent)
        while self._fd is None:
            check_lock_file(self.path)
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                self._fd = self._create()  # None: another process made one meanwhile; look again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode("utf-8", "replace")
                os.close(fd)
                raise RunError(f"{self.out_dir}: in use by another kmlp process ({_describe(holder)}); "
                               f"wait for it to end, or choose another folder") from None
            if self._is_at_path(fd):  # a dead process's lock, ours to remove while we hold it
                os.unlink(self.path)
            os.close(fd)
        return self

    def _create(self) -> int | None:
        """A new lock file, locked and naming this process; None if one appeared at the path."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f"{self.path.name}.", suffix=".tmp")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv),
                                     "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode())
            os.fchmod(fd, new_file_mode())
            os.link(tmp, self.path)  # fails if anything, a symbolic link included, is there
        except FileExistsError:
            os.close(fd)
            return None
        except OSError as e:
            os.close(fd)
            raise RunError(f"{self.path.parent}: cannot write there ({e.strerror or e})") from None
        finally:
            os.unlink(tmp)
        return fd

    def _is_at_path(self, fd: int) -> bool:
        try:
            return os.lstat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc) -> None:
        try:
            if self._is_at_path(self._fd):
                os.unlink(self.path)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {info['pid']}, since {info['since']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "pid unknown"


# ---------------------------------------------------------------------------------------------
# Writing a run whole, and replacing only what kmlp wrote


def staging_dir(out_dir: Path) -> Path:
    """A fresh, hidden folder beside ``out_dir`` to write a run into before it is moved into place."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    os.chmod(path, new_dir_mode())  # mkdtemp makes it private; a run is as readable as any new folder
    return path


def publish(staging: Path, out_dir: Path, kind: str = "run") -> Path | None:
    """Move a completely written result of ``kind`` from ``staging`` into place, replacing an earlier
    one at ``out_dir`` (which :func:`check_out_dir` accepted). Returns None, or the folder holding
    what was left of the earlier one (see below).

    The manifest is written last (:mod:`kmlp.manifest`). What outlives replacing (a run's exported
    versions, :data:`KEPT_ON_RETRAINING`) is hard-linked into the new result first; then the two folders are
    exchanged in one step, so a reader (or a server watching ``out_dir/export``) sees the old result
    or the new one, never neither. Of the old one, only what its manifest lists is then deleted:
    anything a user put there meanwhile is kept. ``staging`` is removed if anything fails before.
    """
    staging, out_dir = Path(staging), Path(out_dir)
    try:
        if not out_dir.exists():
            manifest.write(staging, kind)
            os.rename(staging, out_dir)
            return None
        manifest.link_listed(out_dir, staging, KEPT_ON_RETRAINING if kind == "run" else ())
        manifest.write(staging, kind)
        _exchange(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging if manifest.remove_owned(staging) else None  # staging holds the old result now


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux's ``renameat2(RENAME_EXCHANGE)``); where the system or file
    system lacks it, fall back to two renames, with a moment in which ``b`` does not exist."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(b))
    aside = Path(tempfile.mkdtemp(prefix=f".{b.name}.old-", dir=b.parent))
    os.rmdir(aside)
    os.replace(b, aside)
    os.replace(a, b)
    os.replace(aside, a)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None


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
    records = read_json(path) if path.exists() else []
    records.append(record)
    write_json(path, records)
    manifest.record_files(run_dir, EVALUATIONS_FILE)
    return records


# ---------------------------------------------------------------------------------------------
# Reading a run back


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
        values = dict(info["config"])
        if "split_seed" not in values and "seed" in values:
            values["split_seed"] = values["seed"]  # runs from before split_seed split by their seed
        config = Config.from_dict(values, source=str(path / CONFIG_FILE))
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
