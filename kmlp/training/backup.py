"""The backup of a training in progress, beside its run, and resuming from it.

    saved_models/.default.backup/     while ``kmlp train --out saved_models/default`` runs
        run.json                      what the backup belongs to (configuration, plan, data)
        latest.weights.h5 + training_metadata.json (+ *.bkp)   Keras's BackupAndRestore
        history.csv                   one row per completed epoch (dev loss, rate, seconds so far)
        curve.csv                     the training curve so far (step, loss, lr)
        logs/                         TensorBoard logs so far (see kmlp.training.logs): watch a live run with
                                      tensorboard --logdir saved_models

After every epoch, Keras's ``BackupAndRestore`` saves the model and optimizer; if the process dies,
the same training with ``resume=True`` continues from the last completed epoch, with the same
minibatches, its history, curve, logs and training time. The backup is deleted once the run is
saved, its logs linked into the run first.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import keras

from kmlp import errors
from kmlp.data.pipeline import NamesData
from kmlp.runs import folders, rundir
from kmlp.training import logs
from kmlp.training.callbacks.loss_curve import LossCurve
from kmlp.training.callbacks.timing import ElapsedTime
from kmlp.utils import atomic
from kmlp.utils.jsonfile import read_json

IDENTITY_FILE = rundir.BACKUP_IDENTITY_FILE
METADATA_FILE = "training_metadata.json"
WEIGHTS_FILE = "latest.weights.h5"
CURVE_FILE = "curve.csv"


def backup_dir(out_dir, worker: str | None = None) -> Path:
    """Where training keeps its last completed epoch until the run is published: a hidden folder
    beside ``out_dir`` (``saved_models/.default.backup`` for ``saved_models/default``; a multi-worker
    training's ``worker`` other than the chief keeps its own, ``.default.worker-1.backup``)."""
    return folders.beside(out_dir, "backup", worker)


def identity(config, data: NamesData, plan, started_from: dict | None = None) -> dict:
    """What a backup must match to be resumed: the configuration, the plan, the data (the file's
    SHA-256 as it was read; names given as a list, their train split's) and, with --from, the
    weights it started from (a run that changed since is another start)."""
    if data.data_sha256 is not None:
        data_id = {"data": str(Path(data.path).absolute()), "data_sha256": data.data_sha256}
    else:
        data_id = {"data": None, "train_sha256": data.digest("train")}
    start = {"started_from": started_from} if started_from else {}
    return {"config": config.to_dict(), "plan": asdict(plan), **data_id, **start}


class Backup:
    """The backup folder of one run. :meth:`start` checks or creates it and says which epoch training
    starts at; :meth:`callbacks` are what ``fit`` needs to keep it; :meth:`remove` deletes it."""

    def __init__(self, out_dir, worker: str | None = None):
        self.path = backup_dir(out_dir, worker)
        self.history = self.path / rundir.HISTORY_FILE
        self.curve = self.path / CURVE_FILE
        self.logs = self.path / rundir.LOGS_DIR

    def start(self, resume: bool, expected: dict, log=print) -> int:
        """The epoch training starts at: 0, or with ``resume`` the last one the backup completed.

        A backup left by an interrupted run is used only with ``resume`` and only by the same run
        (``expected``, see :func:`identity`); it is never silently discarded, since it may hold hours
        of training.
        """
        folders.check_backup_dir(self.path)  # a user's folder of that name is never touched
        epoch = repair(self.path) if self.path.exists() else None
        if self.path.exists() and epoch is None:  # no epoch was completed: nothing to keep
            self.remove()
        if self.path.exists() and not resume:
            raise errors.RunError(f"{self.path}: an interrupted training of this run is kept there; pass "
                                f"--resume to continue it, or delete the folder to start over")
        if not self.path.exists():
            if resume:
                log(f"nothing to resume in {self.path}; starting from step 0")
            self.path.mkdir(parents=True)
            try:
                atomic.write_json(self.path / IDENTITY_FILE, expected)
            except BaseException:  # a folder without it would not be known as a backup next time
                self.path.rmdir()
                raise
            return 0
        saved = self.kept_identity() or {}
        if saved != expected:
            raise errors.RunError(f"{self.path}: the interrupted training there is another run "
                                f"({_difference(saved, expected)}); run the same command as before with "
                                f"--resume, or delete the folder")
        self._trim(epoch, epoch * expected["plan"]["steps_per_call"] * expected["plan"]["calls_per_epoch"])
        log(f"resuming from {self.path}: {epoch} of {expected['plan']['epochs']} epochs done")
        return epoch

    def kept_identity(self) -> dict | None:
        """What the backup kept here belongs to (see :func:`identity`), or None if none is kept."""
        path = self.path / IDENTITY_FILE
        return rundir.read_json(path) if path.exists() else None

    def _trim(self, epoch: int, step: int) -> None:
        """Drop what was written after the epoch the backup holds (a kill between writes leaves it)."""
        if self.history.exists():  # the header and one row per completed epoch
            rows = self.history.read_text(encoding="utf-8").splitlines(keepends=True)
            self.history.write_text("".join(rows[:1 + epoch]), encoding="utf-8")
        if self.curve.exists():
            rows = self.curve.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = rows[:1] + [r for r in rows[1:] if int(r.split(",", 1)[0]) <= step]
            self.curve.write_text("".join(kept), encoding="utf-8")
        logs.trim(self.logs, step)

    def go_back(self, epoch: int, step: int) -> bool:
        """Put back the epoch before the last one, if it is ``epoch`` (ending at optimizer step
        ``step``), for a multi-worker training whose other workers did not back up the last one
        (BackupAndRestore's ``double_checkpoint`` keeps it in ``*.bkp``); False if it is not there."""
        if epoch == 0:  # the only epoch it holds goes: the training starts over
            for name in (METADATA_FILE, WEIGHTS_FILE):
                for path in (self.path / name, Path(f"{self.path / name}.bkp")):
                    path.unlink(missing_ok=True)
        elif put_back_previous(self.path, only_epoch=epoch) is None:
            return False
        self._trim(epoch, step)
        return True

    def seconds_done(self) -> float:
        """Training time of the epochs the backup holds (0 for a fresh start)."""
        if not self.history.exists():
            return 0.0
        rows = self.history.read_text(encoding="utf-8").splitlines()
        if len(rows) < 2 or "seconds" not in rows[0].split(","):
            return 0.0
        return float(rows[-1].split(",")[rows[0].split(",").index("seconds")])

    def dev_losses(self) -> list[float]:
        """The dev loss of each epoch the backup holds, in order."""
        if not self.history.exists():
            return []
        rows = self.history.read_text(encoding="utf-8").splitlines()
        column = rows[0].split(",").index("val_loss")
        return [float(row.split(",")[column]) for row in rows[1:]]

    def callbacks(self, start_epoch: int) -> tuple[LossCurve, ElapsedTime, list]:
        """``(curve, clock, callbacks)`` for ``fit``: the curve and clock carry on from the backup.

        The history row is written before the backup records its epoch: a kill in between leaves
        an extra row, which :meth:`start` drops, rather than a missing one.
        """
        curve = LossCurve(self.curve)
        clock = ElapsedTime(earlier=self.seconds_done() if start_epoch else 0.0)
        return curve, clock, [
            curve, clock,
            keras.callbacks.CSVLogger(str(self.history), append=start_epoch > 0),
            keras.callbacks.BackupAndRestore(str(self.path), double_checkpoint=True,
                                             delete_checkpoint=False),  # deleted once published
        ]

    def remove(self) -> None:
        """Delete the backup, once its run is saved; only a kmlp backup (:func:`kmlp.runs.folders.is_backup_dir`)."""
        if folders.is_backup_dir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)


def _difference(saved: dict, expected: dict) -> str:
    old, new = saved.get("config", {}), expected["config"]
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        return f"options {', '.join(differ)} differ"
    if saved.get("plan") != expected["plan"]:
        return "the plan differs"
    if saved.get("started_from") != expected.get("started_from"):
        return "the weights of the run --from starts from differ"
    return "the names file differs"


def epoch_of(metadata: Path) -> int | None:
    """The epoch a BackupAndRestore metadata file records, or None if it is missing or unreadable."""
    try:
        return int(read_json(metadata, error=ValueError)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def repair(backup: Path) -> int | None:
    """Undo a save that a kill cut short; returns the epoch the backup then holds (None: no epoch).

    BackupAndRestore (with ``double_checkpoint``) copies the weights and metadata to ``*.bkp``, then
    writes new weights, then new metadata. Killed while writing the metadata, it leaves new weights
    beside an empty metadata file: the previous pair is put back (a kill during the weights is
    already handled by Keras, which falls back to the ``*.bkp`` weights). With no previous pair, the
    first epoch never finished saving, and the metadata goes, so the run starts over.
    """
    metadata = Path(backup) / METADATA_FILE
    epoch = epoch_of(metadata)
    if epoch is not None or not metadata.exists():
        return epoch
    previous_epoch = put_back_previous(backup)
    if previous_epoch is None:
        metadata.unlink()
    return previous_epoch


def put_back_previous(backup: Path, only_epoch: int | None = None) -> int | None:
    """Put the pair BackupAndRestore saved before the last (``*.bkp``, kept by its
    ``double_checkpoint``) in place of the last; returns its epoch. Nothing changes, and None is
    returned, if there is no such pair or (with ``only_epoch``) it holds another epoch."""
    metadata, weights = Path(backup) / METADATA_FILE, Path(backup) / WEIGHTS_FILE
    previous_metadata, previous_weights = (Path(f"{p}.bkp") for p in (metadata, weights))
    epoch = epoch_of(previous_metadata)
    if epoch is None or not previous_weights.exists() or only_epoch not in (None, epoch):
        return None
    shutil.copyfile(previous_weights, weights)
    shutil.copyfile(previous_metadata, metadata)
    return epoch
