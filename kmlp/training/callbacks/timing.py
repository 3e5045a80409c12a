"""Timing a training: its elapsed time across resumed parts, and the cost of a step and an epoch.

They count optimizer steps with ``optimizer.iterations`` rather than Keras "batches", so they stay
right when one batch runs several optimizer steps (a :class:`~kmlp.models.mlp.CharMLP` chunk of K
minibatches).
"""

from __future__ import annotations

import math
import statistics
import time

import keras

from kmlp.training.callbacks.state import step_of


class ElapsedTime(keras.callbacks.Callback):
    """Adds ``seconds``, the training time so far, to every epoch's logs, where ``History`` and
    ``CSVLogger`` record it.

    >>> model.fit(train, epochs=10, callbacks=[ElapsedTime(), keras.callbacks.CSVLogger("h.csv")])

    ``earlier`` is time spent before this ``fit`` (a resumed run's first part). Put it before the
    callbacks that read the logs.
    """

    def __init__(self, earlier: float = 0.0):
        super().__init__()
        self.earlier = float(earlier)

    def on_train_begin(self, logs=None):
        self._started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.earlier + time.perf_counter() - self._started

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = round(self.seconds, 3)


class StepTimer(keras.callbacks.Callback):
    """Times ``fit`` in optimizer steps: its first call apart (it traces and compiles), the calls
    in the middle of an epoch, and what an epoch adds: its start (the callbacks' ``on_epoch_begin``
    and a first call that starts cold) and its end (the validation, the callbacks' ``on_epoch_end``).

    >>> timer = StepTimer()
    >>> model.fit(train, steps_per_epoch=2, epochs=4, validation_data=dev, callbacks=[backup, timer])
    >>> timer.seconds_per_step, timer.epoch_ends, timer.epoch_starts

    Put it last, so that what the other callbacks do counts in the times. With ``min_seconds`` it
    stops training once the calls in the middle of epochs have taken that long.
    """

    def __init__(self, min_seconds: float = math.inf):
        super().__init__()
        self.min_seconds = min_seconds

    def on_train_begin(self, logs=None):
        self.first_call, self.first_steps = None, 0  # the first call: seconds and optimizer steps
        self.steps, self.seconds = 0, 0.0            # the calls in the middle of an epoch
        self.epoch_starts, self.epoch_start_steps = [], []  # each later epoch's first call, from the
        self.epoch_ends = []                         # end of the epoch before; last call to epoch end
        self._since = None

    def on_epoch_begin(self, epoch, logs=None):
        self._since = self._since or time.perf_counter()
        self._step, self._starting = step_of(self.model.optimizer), True

    def on_train_batch_end(self, batch, logs=None):
        now, step = time.perf_counter(), step_of(self.model.optimizer)
        seconds, steps = now - self._since, step - self._step
        if self.first_call is None:
            self.first_call, self.first_steps = seconds, steps
        elif self._starting:
            self.epoch_starts.append(seconds)
            self.epoch_start_steps.append(steps)
        else:
            self.steps, self.seconds = self.steps + steps, self.seconds + seconds
            if self.seconds >= self.min_seconds:
                self.model.stop_training = True
        self._since, self._step, self._starting = now, step, False

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.epoch_ends.append(now - self._since)
        self._since = now

    @property
    def seconds_per_step(self) -> float:
        """Mean seconds per optimizer step of the calls in the middle of epochs (NaN if none)."""
        return self.seconds / self.steps if self.steps else math.nan

    def seconds_per_epoch(self, skip: int = 1) -> float:
        """What an epoch adds to its steps, on average over the epochs after the first ``skip`` (the
        first compiles the validation): its end, and its start beyond a call's steps."""
        ends = self.epoch_ends[skip:]
        starts = [s - n * self.seconds_per_step for s, n in zip(self.epoch_starts, self.epoch_start_steps)]
        return statistics.fmean(ends) + (statistics.fmean(starts[max(skip - 1, 0):]) if starts else 0.0)
