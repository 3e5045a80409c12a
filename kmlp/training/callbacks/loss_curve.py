"""The training curve: the mean training loss of every optimizer step, and its rate, in a CSV file.

They count optimizer steps with ``optimizer.iterations`` rather than Keras "batches", so they stay
right when one batch runs several optimizer steps (a :class:`~kmlp.models.mlp.CharMLP` chunk of K
minibatches).
"""

from __future__ import annotations

import csv
import os

import keras

from kmlp.training.callbacks.state import rate_of, step_of


class BatchMeans:
    """Each batch's own mean of the values ``fit`` logs, recovered from the running means of the
    epoch that Keras reports after every batch, each batch weighted by its optimizer steps (exact up
    to float32 rounding, well under 0.01 for this model's losses).

    >>> means = BatchMeans()
    >>> means.start(step)                  # at the start of each epoch
    >>> means.add(step, logs)              # after each batch: {"loss": that batch's mean, ...}
    """

    def start(self, step: int) -> None:
        self._start, self._count, self._means = step, 0, {}

    def add(self, step: int, logs) -> dict:
        """The batch that ended at optimizer ``step``: its mean of every value in ``logs`` (empty if
        it ran no step)."""
        count = step - self._start
        if not logs or count <= self._count:
            return {}
        means = {name: float(value) for name, value in logs.items()}
        batch = {name: (mean * count - self._means.get(name, 0.0) * self._count) / (count - self._count)
                 for name, mean in means.items()}
        self._means, self._count = means, count
        return batch


class LossCurve(keras.callbacks.Callback):
    """Records the training curve at the finest grain ``fit`` reports: one point per batch.

    After ``fit``, ``steps[i]`` is the optimizer step at the end of batch i, ``losses[i]`` the mean
    training loss over that batch's optimizer steps and ``rates[i]`` the learning rate it ran at.

    >>> curve = LossCurve()
    >>> model.fit(train, steps_per_epoch=1000, epochs=10, callbacks=[curve])
    >>> plots.plot_loss("loss.png", curve.steps, curve.losses)

    With ``path``, the points are also appended to that CSV file (``step,loss,lr``) at the end of
    every epoch, and the points already in it are read back when training begins, so that a run
    resumed after an interruption has its whole curve.

    Keras logs the running mean of the epoch so far; each batch's own mean is recovered from two
    successive running means (:class:`BatchMeans`). Put it after the schedule callbacks, so that it
    reads the rate they set for the batch.
    """

    COLUMNS = ("step", "loss", "lr")

    def __init__(self, path=None):
        super().__init__()
        self.path = path
        self._batches = BatchMeans()

    def on_train_begin(self, logs=None):
        self.steps, self.losses, self.rates = [], [], []
        if self.path and os.path.exists(self.path):
            with open(self.path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    self.steps.append(int(row["step"]))
                    self.losses.append(float(row["loss"]))
                    self.rates.append(float(row["lr"]))
        self._saved = len(self.steps)

    def on_epoch_begin(self, epoch, logs=None):
        self._batches.start(step_of(self.model.optimizer))

    def on_train_batch_begin(self, batch, logs=None):
        self._rate = rate_of(self.model.optimizer)

    def on_train_batch_end(self, batch, logs=None):
        step = step_of(self.model.optimizer)
        means = self._batches.add(step, {"loss": logs["loss"]} if logs and "loss" in logs else None)
        if means:
            self.steps.append(step)
            self.losses.append(means["loss"])
            self.rates.append(self._rate)

    def on_epoch_end(self, epoch, logs=None):
        if not self.path:
            return
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            if new:
                writer.writerow(self.COLUMNS)
            for i in range(self._saved, len(self.steps)):
                writer.writerow([self.steps[i], repr(self.losses[i]), repr(self.rates[i])])
        self._saved = len(self.steps)
