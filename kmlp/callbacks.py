"""Keras callbacks for the learning rate: schedules counted in optimizer steps, a training-curve
recorder, and Leslie Smith's learning-rate range test.

All of them work with any compiled Keras model and any Keras optimizer whose learning rate is a
plain number (not a ``LearningRateSchedule``). They count optimizer steps with ``optimizer.iterations``
rather than Keras "batches", so they stay right when one batch runs several optimizer steps (a
:class:`~kmlp.model.CharMLP` chunk of K minibatches); the rate is then set once per chunk.
"""

from __future__ import annotations

import bisect
import csv
import math
import os
import time

import keras
import numpy as np

from .config import check_positive_number, check_range_test


def _rate_of(optimizer) -> float:
    """The optimizer's learning rate as a Python float (exactly its float32 value)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _step_of(optimizer) -> int:
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def _positive(name: str, value) -> float:
    return check_positive_number(value, name)


class _RateSchedule(keras.callbacks.Callback):
    """Sets the rate to ``rate_at(step)`` before every batch and logs the rate in force as ``lr``.

    The rate is written only when it changes (the optimizer keeps it in float32, so comparing with
    the float32 value avoids a write per batch). A change made by another callback, such as
    ``keras.callbacks.ReduceLROnPlateau``, is kept: it scales the rest of the schedule.
    """

    def rate_at(self, step: int) -> float:
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        self._scale = 1.0   # product of the cuts other callbacks made
        self._written = None

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        current = _rate_of(optimizer)
        if self._written and current != self._written:
            self._scale *= current / self._written
        rate = float(np.float32(self.rate_at(_step_of(optimizer)) * self._scale))
        if rate != current:
            optimizer.learning_rate = rate
        self._written = rate

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = _rate_of(self.model.optimizer)


class StepDecay(_RateSchedule):
    """Multiply the learning rate by ``factor`` at each milestone, counted in optimizer steps.

    Example (the lecture's recipe: 0.1, then 0.01 from step 100,000):

    >>> model.fit(train, steps_per_epoch=1000, epochs=200,
    ...           callbacks=[StepDecay(0.1, milestones=[100_000], factor=0.1)])

    The rate at step ``s`` is ``initial_lr * factor ** (number of milestones <= s)``. With chunks of
    K optimizer steps per batch it is set at the start of each chunk, so put milestones on chunk
    boundaries (``kmlp.train.plan_training`` does).
    """

    def __init__(self, initial_lr: float, milestones=(), factor: float = 0.1):
        super().__init__()
        self.initial_lr = _positive("initial_lr", initial_lr)
        self.factor = _positive("factor", factor)
        milestones = list(milestones)
        if any(isinstance(m, bool) or int(m) != m or m < 1 for m in milestones):
            raise ValueError(f"milestones must be positive step counts, got {milestones!r}")
        self.milestones = sorted(int(m) for m in milestones)

    def rate_at(self, step: int) -> float:
        return self.initial_lr * self.factor ** bisect.bisect_right(self.milestones, step)


class CosineDecay(_RateSchedule):
    """Half a cosine wave from ``initial_lr`` down to ``alpha * initial_lr`` over ``decay_steps``
    optimizer steps, then constant (as ``keras.optimizers.schedules.CosineDecay``, but as a callback,
    so the rate stays a plain variable that other callbacks and the range test can set).

    >>> model.fit(train, steps_per_epoch=1000, epochs=20, callbacks=[CosineDecay(1e-2, 20_000)])

    With chunks of K optimizer steps per batch the rate is the schedule's value at the chunk's first
    step, held for the chunk: a staircase within ``initial_lr * pi / 2 * K / decay_steps`` of the curve.
    """

    def __init__(self, initial_lr: float, decay_steps: int, alpha: float = 0.0):
        super().__init__()
        self.initial_lr = _positive("initial_lr", initial_lr)
        if isinstance(decay_steps, bool) or int(decay_steps) != decay_steps or decay_steps < 1:
            raise ValueError(f"decay_steps must be a positive integer, got {decay_steps!r}")
        self.decay_steps = int(decay_steps)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def rate_at(self, step: int) -> float:
        progress = min(step, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.initial_lr * (self.alpha + (1.0 - self.alpha) * cosine)


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

    Keras logs the running mean of the epoch so far, so each batch's own mean is recovered from two
    successive running means (exact up to float32 rounding, well under 0.01 for this model's losses).
    Put it after the schedule callbacks, so that it reads the rate they set for the batch.
    """

    COLUMNS = ("step", "loss", "lr")

    def __init__(self, path=None):
        super().__init__()
        self.path = path

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
        self._epoch_start = _step_of(self.model.optimizer)
        self._mean, self._count = 0.0, 0

    def on_train_batch_begin(self, batch, logs=None):
        self._rate = _rate_of(self.model.optimizer)

    def on_train_batch_end(self, batch, logs=None):
        if not logs or "loss" not in logs:
            return
        step = _step_of(self.model.optimizer)
        count = step - self._epoch_start
        mean = float(logs["loss"])
        if count > self._count:
            self.steps.append(step)
            self.losses.append((mean * count - self._mean * self._count) / (count - self._count))
            self.rates.append(self._rate)
        self._mean, self._count = mean, count

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


class LRFinder(keras.callbacks.Callback):
    """The learning-rate range test (L. Smith, "Cyclical Learning Rates for Training Neural
    Networks", 2017; fastai's ``lr_find``): one minibatch at each of ``num_steps`` rates spaced
    exponentially from ``start_lr`` to ``end_lr``, recording the loss, then everything put back.

    >>> finder = LRFinder(1e-3, 1.0, num_steps=1000)
    >>> model.fit(train_minibatches, steps_per_epoch=1000, epochs=1, callbacks=[finder])
    >>> finder.rates, finder.losses, finder.smoothed   # see kmlp.lr_find for a suggested rate

    ``losses`` are the raw minibatch losses; ``smoothed`` their exponential moving average with
    factor ``beta``, bias-corrected as in Adam so the first points are not pulled towards 0. The test
    stops early once the loss diverges: NaN or infinite, or the smoothed loss above ``diverge_factor``
    times the lowest one so far. When training ends, the model's variables (weights, normalisation
    statistics, dropout seeds) and all the optimizer's variables (step count, learning rate,
    momentum or Adam moments) are restored exactly, so training goes on as if the test never ran.

    One point is one Keras batch: give it plain minibatches (for CharMLP, ``steps_per_call=1``).
    """

    def __init__(self, start_lr: float = 1e-3, end_lr: float = 1.0, num_steps: int = 1000,
                 beta: float = 0.98, diverge_factor: float = 4.0):
        super().__init__()
        check_range_test(start_lr, end_lr, num_steps)
        self.start_lr, self.end_lr = float(start_lr), float(end_lr)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.num_steps = int(num_steps)
        self.beta = float(beta)
        self.diverge_factor = _positive("diverge_factor", diverge_factor)
        self.schedule = np.geomspace(self.start_lr, self.end_lr, self.num_steps)

    def on_train_begin(self, logs=None):
        model, optimizer = self.model, self.model.optimizer
        self._saved_model = [v.numpy() for v in model.variables]
        self._saved_optimizer = [v.numpy() for v in optimizer.variables]
        self._saved_rate = _rate_of(optimizer)
        self.rates, self.losses, self.smoothed = [], [], []
        self.diverged = False
        self._average, self._best = 0.0, math.inf

    def on_epoch_begin(self, epoch, logs=None):
        self._mean, self._count = 0.0, 0

    def on_train_batch_begin(self, batch, logs=None):
        if len(self.rates) >= self.num_steps:
            self.model.stop_training = True
            return
        self.model.optimizer.learning_rate = self.schedule[len(self.rates)]

    def on_train_batch_end(self, batch, logs=None):
        if len(self.rates) >= self.num_steps:
            return
        mean, count = float(logs["loss"]), batch + 1  # logs hold the running mean of the epoch
        loss = mean * count - self._mean * self._count
        self._mean, self._count = mean, count
        k = len(self.rates) + 1
        self._average = self.beta * self._average + (1.0 - self.beta) * loss
        smoothed = self._average / (1.0 - self.beta ** k)
        self.rates.append(float(self.schedule[k - 1]))
        self.losses.append(loss)
        self.smoothed.append(smoothed)
        if not math.isfinite(smoothed) or smoothed > self.diverge_factor * self._best:
            self.diverged = True
            self.model.stop_training = True
        self._best = min(self._best, smoothed)
        if k >= self.num_steps:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        for variable, value in zip(self.model.variables, self._saved_model):
            variable.assign(value)
        optimizer = self.model.optimizer
        for variable, value in zip(optimizer.variables, self._saved_optimizer):
            variable.assign(value)
        optimizer.learning_rate = self._saved_rate  # also when it is not among the variables
