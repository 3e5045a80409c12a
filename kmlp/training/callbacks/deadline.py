"""Ending a training early, at the end of a compiled call, once the rest of it would end after a
deadline: a time budget that holds when the machine gets busier while it trains."""

from __future__ import annotations

import time
from collections import deque

import keras

from kmlp.training.callbacks.state import step_of


class Deadline(keras.callbacks.Callback):
    """Stops training once going on would end after ``deadline`` (a ``time.perf_counter()`` value)
    by more than ``slack`` seconds, what follows training (``seconds_to_finish``) included.

    >>> deadline = Deadline(time.perf_counter() + 60, seconds_per_step=0.07, seconds_per_evaluation=1.5,
    ...                     seconds_to_finish=5.0)
    >>> model.fit(train, steps_per_epoch=8, epochs=4, validation_data=dev, callbacks=[..., deadline])
    >>> deadline.stopped_at   # the optimizer step training stopped at, or None

    The costs are those measured before training. After every call but the run's last, going on
    commits to: the next call, the evaluation that ends the epoch (before it, if this call ends
    one; after it, if training stops there), and the finish. Each is scaled by how much slower than
    measured the latest calls ran, the evaluations between them included: the last two, or more, as
    many as ``window`` seconds of measured cost hold (a fit's first call, which compiles, left
    out). A machine that gets busier is seen within a call or two; short calls, which a busy
    scheduler delays unevenly, are judged together. If going on would end late, training stops now
    (Keras still ends the epoch with its evaluation) and ``on_stop(step, slowdown)`` is called. A
    run going as measured ends as planned.

    Put it last, so that the other callbacks' work counts in the time of a call.
    """

    clock = staticmethod(time.perf_counter)  # (a class attribute: a test can make time pass faster)

    def __init__(self, deadline: float, seconds_per_step: float, seconds_per_evaluation: float,
                 seconds_to_finish: float, slack: float = 0.0, window: float = 0.0, on_stop=None):
        super().__init__()
        self.deadline, self.slack, self.window = float(deadline), float(slack), float(window)
        self.step_cost, self.evaluation_cost = float(seconds_per_step), float(seconds_per_evaluation)
        self.finish_cost, self.on_stop = float(seconds_to_finish), on_stop
        self.stopped_at = None

    def on_train_begin(self, logs=None):
        self.stopped_at, self._latest, self._last = None, deque(), None  # (seconds taken, measured) each call

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        now, step = self.clock(), step_of(self.model.optimizer)
        last, self._last = self._last, (now, step)
        ends_epoch = batch + 1 == self.params["steps"]
        ends_run = ends_epoch and self._epoch + 1 == self.params["epochs"]
        if last is None or ends_run or self.model.stop_training:
            return  # the first call compiles; after the last, nothing is left; stopped: not ours to record
        steps = step - last[1]
        call, evaluation = steps * self.step_cost, self.evaluation_cost
        slowdown = self._slowdown(now - last[0], call + evaluation * (batch == 0))  # (an epoch began)
        going_on = (call + evaluation * (1 + ends_epoch) + self.finish_cost) * slowdown
        if now + going_on > self.deadline + self.slack:
            self.stopped_at, self.model.stop_training = step, True
            if self.on_stop:
                self.on_stop(step, slowdown)

    def _slowdown(self, taken: float, measured: float) -> float:
        """Seconds taken over seconds measured, of the latest calls, this one (``taken`` for a cost
        ``measured`` before training) included."""
        self._latest.append((taken, measured))
        while len(self._latest) > 2 and sum(m for _, m in self._latest) - self._latest[0][1] >= self.window:
            self._latest.popleft()
        return sum(t for t, _ in self._latest) / sum(m for _, m in self._latest)
