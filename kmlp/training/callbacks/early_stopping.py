"""Early stopping in optimizer steps, whose best weights outlive an interruption.

:class:`EarlyStopping` is Keras's ``EarlyStopping(monitor="val_loss", restore_best_weights=True)``
with its patience given in optimizer steps, like every callback here, and its best weights kept in a
folder (a training's backup) so that a resumed training stops where, and ends with the weights that,
the uninterrupted one would. When it is on: :mod:`kmlp.training.small_lists`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import keras
import numpy as np

from kmlp.errors import RunError

BEST_WEIGHTS_FILE = "best.weights.npz"


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Stop when dev loss has not improved for ``patience`` optimizer steps (rounded up to whole
    evaluations of ``steps_per_epoch`` steps), and end with the weights of the best evaluation.

    With a ``folder``, the best weights are written there whenever they change; a resumed training
    passes the dev losses of the epochs already done (``dev_losses``), from which the same decisions
    are made again, and reads the best weights back. Put it after Keras's ``BackupAndRestore``: its
    weights are then loaded first, and an epoch's best weights are written after the backup records
    the epoch, so the file never holds a later epoch than the backup.
    """

    def __init__(self, patience: int, steps_per_epoch: int, folder=None, dev_losses=()):
        super().__init__(monitor="val_loss", mode="min", restore_best_weights=True,
                         patience=max(1, math.ceil(patience / steps_per_epoch)))
        self.patience_steps, self.steps_per_epoch = patience, steps_per_epoch
        self.folder = None if folder is None else Path(folder)
        self.dev_losses = [float(loss) for loss in dev_losses]

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.monitor_op is None:
            self._set_monitor_op()
        for epoch, loss in enumerate(self.dev_losses):  # as on_epoch_end decided, epoch by epoch
            self.wait += 1
            if self._is_improvement(loss, self.best):
                self.best, self.best_epoch, self.wait = loss, epoch, 0
        if self.dev_losses:
            last = self.best_epoch == len(self.dev_losses) - 1  # then the backup's weights are the best
            self.best_weights = self.model.get_weights() if last else self._read_best()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.folder is not None and self.best_epoch == epoch and self.best_weights is not None:
            self._write_best(epoch)

    def _write_best(self, epoch: int) -> None:
        path = self.folder / BEST_WEIGHTS_FILE
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as f:
            np.savez(f, *self.best_weights, epoch=epoch)
        os.replace(partial, path)

    def _read_best(self) -> list:
        path = self.folder / BEST_WEIGHTS_FILE
        try:
            with np.load(path) as saved:
                if int(saved["epoch"]) != self.best_epoch:
                    raise ValueError(f"it holds epoch {int(saved['epoch']) + 1}, not {self.best_epoch + 1}")
                return [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
        except (OSError, ValueError, KeyError) as e:
            raise RunError(f"{path}: the best weights of the interrupted training cannot be read ({e}); "
                           f"delete {self.folder} to start over") from None

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch > 0

    def record(self) -> dict:
        """For metrics.json: the patience, and the steps of the best evaluation and of the stop."""
        return {"patience_steps": self.patience_steps, "best_step": (self.best_epoch + 1) * self.steps_per_epoch,
                "best_dev_loss": None if self.best is None else float(self.best),
                "stopped_at_step": (self.stopped_epoch + 1) * self.steps_per_epoch if self.stopped else None}
