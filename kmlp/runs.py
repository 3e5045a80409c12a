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

Beside DIR, while a process works on it: ``.DIR.lock`` (who holds the run), ``.DIR.backup/`` (the
last completed epoch of a training and its TensorBoard logs so far, see :mod:`kmlp.backup`) and ``.DIR.partial-*`` (a run being
written); a worker of a multi-worker training other than the chief, which never writes DIR, keeps
its own ``.DIR.worker-1.lock`` and ``.DIR.worker-1.backup/`` (see :func:`beside`). Files and
folders are created with the permissions the user's umask gives.
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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

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
# Everything kmlp writes into a run directory; anything else there is the user's and is never replaced.
RUN_ENTRIES = frozenset({MODEL_FILE, CONFIG_FILE, METRICS_FILE, EVALUATIONS_FILE, HISTORY_FILE,
                         "loss.png", "embedding.png", EXPORT_DIR, LITERT_DIR, LOGS_DIR})
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


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a run kmlp wrote: a model and a config.json with a configuration."""
    try:
        info = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "config" in info and "vocab" in info and (path / MODEL_FILE).is_file()


def check_out_dir(out_dir, own_entries=RUN_ENTRIES, is_own=is_run_dir, what: str = "a kmlp run") -> Path:
    """Refuse, before any work, an output folder kmlp may not write: a file, the current folder or one
    holding it, a symbolic link, or a folder holding anything kmlp did not write there.

    ``out_dir`` may be new, empty, or hold ``what`` (recognised by ``is_own``, holding only
    ``own_entries``). Its parent must be writable. Returns the folder as an absolute path.
    """
    path = Path(os.path.abspath(out_dir))
    if path.is_symlink():
        raise RunError(f"{out_dir}: is a symbolic link; give the folder it points to ({path.resolve()})")
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise RunError(f"{out_dir}: is the current folder or holds it; give a folder of its own, "
                       f"e.g. {Path(out_dir) / 'run'}")
    if path.exists() and not path.is_dir():
        raise RunError(f"{out_dir}: is a file; kmlp writes {what} into a folder of its own")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if entries:
        foreign = [name for name in entries if name not in own_entries]
        if not is_own(path) or foreign:
            shown = ", ".join((foreign or entries)[:5]) + (", ..." if len(foreign or entries) > 5 else "")
            raise RunError(f"{out_dir}: holds files kmlp did not write ({shown}); kmlp replaces only "
                           f"{what} of its own: choose another folder")
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
        raise RunError(f"{e.filename or folder}: cannot write there ({e.strerror or e})") from None
    return folder


def beside(out_dir, what: str, worker: str | None = None) -> Path:
    """A hidden path beside ``out_dir`` for ``what`` (``lock``, ``backup``): ``.DIR.lock`` for the
    process that writes the run, ``.DIR.worker-1.lock`` for a multi-worker training's ``worker``
    other than the chief (see :mod:`kmlp.cluster`), so that workers sharing a folder never collide."""
    out_dir = Path(os.path.abspath(out_dir))
    return out_dir.parent / ".".join(["", out_dir.name, *([worker] if worker else []), what])


class RunLock:
    """Only one kmlp process at a time writes a run (training, evaluating, exporting) or another output
    folder: an exclusive ``flock`` on a hidden file beside it, which the operating system releases when
    the process ends, however it ends, so a lock left by a dead process is simply taken over.

    >>> with RunLock("saved_models/default"):
    ...     ...  # a second process gets RunError naming this one's pid and command

    ``worker`` names a multi-worker training's worker other than the chief: it locks its own file
    (:func:`beside`), so that it never blocks the chief or another worker sharing the folder.
    """

    def __init__(self, out_dir, worker: str | None = None):
        self.out_dir = Path(os.path.abspath(out_dir))
        self.path = beside(out_dir, "lock", worker)
        self._fd = None

    def __enter__(self) -> "RunLock":
        check_writable(self.path.parent)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode("utf-8", "replace")
                os.close(fd)
                raise RunError(f"{self.out_dir}: in use by another kmlp process ({_describe(holder)}); "
                               f"wait for it to end, or choose another folder") from None
            try:  # the holder before us may have removed the file between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv),
                                 "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        try:
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
# Writing, whole or not at all, with the user's umask


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    return 0o777 & ~_umask()


def staging_dir(out_dir: Path) -> Path:
    """A fresh, hidden folder beside ``out_dir`` to write a run into before it is moved into place."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    os.chmod(path, new_dir_mode())  # mkdtemp makes it private; a run is as readable as any new folder
    return path


def publish(staging: Path, out_dir: Path) -> Path:
    """Move a completely written run into place, replacing an earlier run at ``out_dir``.

    What outlives retraining (:data:`KEPT_ON_RETRAINING`: the exported versions) is hard-linked into
    the new run first; then the two folders are exchanged in one step, so a reader (or a server
    watching ``out_dir/export``) sees the old run or the new one, never neither. The old run is
    deleted only once the new one is in place.
    """
    staging, out_dir = Path(staging), Path(out_dir)
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return out_dir
    for name in KEPT_ON_RETRAINING:
        if (out_dir / name).exists():
            shutil.copytree(out_dir / name, staging / name, copy_function=link_or_copy)
    _exchange(staging, out_dir)
    shutil.rmtree(staging, ignore_errors=True)  # it holds the old run now
    return out_dir


def link_or_copy(src, dst):
    """Hard-link ``src`` to ``dst``, or copy it where the file system cannot."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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
        os.fchmod(fd, new_file_mode())  # mkstemp makes it private
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
        json.dump(obj, f, indent=2, sort_keys=False, ensure_ascii=False)
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


def add_evaluation(run_dir: Path, record: dict) -> list:
    """Append ``record`` (a loss measured on a names file other than the run's own) to evaluations.json."""
    path = Path(run_dir) / EVALUATIONS_FILE
    records = read_json(path) if path.exists() else []
    records.append(record)
    write_json(path, records)
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
