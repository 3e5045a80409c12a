"""Learning-rate schedules counted in optimizer steps: step decay (the lecture's) and cosine.

They work with any compiled Keras model and any Keras optimizer whose learning rate is a plain
number (not a ``LearningRateSchedule``). They count optimizer steps with ``optimizer.iterations``
rather than Keras "batches", so they stay right when one batch runs several optimizer steps (a :class:`~kmlp.models.mlp.CharMLP` chunk of K
minibatches). The rate is set once per chunk.
"""

from __future__ import annotations

import bisect
import math

import keras
import numpy as np

from kmlp.config import check_positive_number
from kmlp.training.callbacks.state import rate_of, step_of


def positive(name: str, value) -> float:
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
        current = rate_of(optimizer)
        if self._written and current != self._written:
            self._scale *= current / self._written
        rate = float(np.float32(self.rate_at(step_of(optimizer)) * self._scale))
        if rate != current:
            optimizer.learning_rate = rate
        self._written = rate

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = rate_of(self.model.optimizer)


class StepDecay(_RateSchedule):
    """Multiply the learning rate by ``factor`` at each milestone, counted in optimizer steps.

    Example (the lecture's recipe: 0.1, then 0.01 from step 100,000):

    >>> model.fit(train, steps_per_epoch=1000, epochs=200,
    ...           callbacks=[StepDecay(0.1, milestones=[100_000], factor=0.1)])

    The rate at step ``s`` is ``initial_lr * factor ** (number of milestones <= s)``. With chunks of
    K optimizer steps per batch it is set at the start of each chunk, so put milestones on chunk
    boundaries (``kmlp.training.setup.plan_training`` does).
    """

    def __init__(self, initial_lr: float, milestones=(), factor: float = 0.1):
        super().__init__()
        self.initial_lr = positive("initial_lr", initial_lr)
        self.factor = positive("factor", factor)
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
        self.initial_lr = positive("initial_lr", initial_lr)
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
