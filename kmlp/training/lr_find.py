"""The learning-rate range test: run it, read a rate off the curve, save the curve.

    from kmlp.training.lr_find import lr_find, range_test

    result = lr_find(model, data.dataset("train", 32))   # 1,000 steps, rates 1e-3 .. 1
    result.suggested_lr                                    # e.g. 0.1 for the lecture's model
    model.fit(...)                                         # starts from the untouched model

    result = range_test(kmlp.preset("lecture"), data, out_dir="lr")   # what `kmlp lr-find` runs

See :class:`kmlp.training.callbacks.lr_finder.LRFinder` for the test itself.
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from kmlp.runs.rundir import LOGS_DIR
from kmlp.training.callbacks.lr_finder import LRFinder
from kmlp.utils.atomic import write_text
from kmlp.utils.numeric import centred_average

CSV_FILE = "lr_find.csv"
PLOT_FILE = "lr_find.png"
KIND = "lr_find"  # its output folder's kind (kmlp.runs.manifest.KINDS)


@dataclass
class LRFindResult:
    """The range test's curve and the rate read off it."""

    rates: list[float]      # the rate of each step
    losses: list[float]     # raw minibatch loss of each step
    smoothed: list[float]   # bias-corrected exponential moving average of the losses
    suggested_lr: float
    floor_lr: float         # the rate at the floor of the curve (see valley_floor)
    floor_loss: float       # the averaged loss there
    diverged: bool          # stopped early because the loss blew up
    start_lr: float
    end_lr: float
    num_steps: int          # steps asked for (len(rates) is how many ran)
    method: str = "floor/2"

    def to_json(self) -> dict:
        return {"suggested_lr": self.suggested_lr, "method": self.method, "floor_lr": self.floor_lr,
                "floor_loss": self.floor_loss, "floor_at_start": self.floor_at_start,
                "floor_at_end": self.floor_at_end, "diverged": self.diverged,
                "steps_run": len(self.rates), "num_steps": self.num_steps,
                "start_lr": self.start_lr, "end_lr": self.end_lr}

    @cached_property
    def _centres(self) -> np.ndarray:
        return centred_average(self.rates, self.losses)[0]

    @property
    def floor_at_end(self) -> bool:
        """The loss was still falling at the last rates tried: a larger end_lr would show more."""
        return bool(not self.diverged and self.floor_lr >= self._centres[-1])

    @property
    def floor_at_start(self) -> bool:
        """The loss was lowest at the first rates tried: a smaller start_lr would show more."""
        return bool(self.floor_lr <= self._centres[0])

    def write_csv(self, path) -> Path:
        """step, lr, loss, smoothed_loss: one row per step; written whole or not at all."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, (rate, loss, smooth) in enumerate(zip(self.rates, self.losses, self.smoothed)):
            writer.writerow([i, f"{rate:.6g}", f"{loss:.6g}", f"{smooth:.6g}"])
        return write_text(path, buffer.getvalue())


def valley_floor(rates, losses, window: float = 0.1) -> tuple[float, float]:
    """``(rate, loss)`` at the lowest point of :func:`centred_average`."""
    centres, averaged = centred_average(rates, losses, window)
    if not np.isfinite(averaged).any():
        raise ValueError("the range test recorded no finite stretch of losses; try a smaller start_lr")
    lowest = int(np.argmin(averaged))
    return float(centres[lowest]), float(averaged[lowest])


def suggest_lr(rates, losses) -> float:
    """Half the rate at the floor of the loss curve (see :func:`valley_floor`).

    The floor is the largest rate that still lowers the loss; above it larger steps make things
    worse and soon the loss blows up. The best constant rate is usually within a factor of two below
    that (Bengio, "Practical recommendations for gradient-based training of deep architectures",
    2012; Smith 2017 uses the same rule of thumb), hence half. How this and other rules fare on the
    lecture's model is in the README ("Learning rate").
    """
    return valley_floor(rates, losses)[0] / 2


def lr_find(model, dataset, start_lr: float = 1e-3, end_lr: float = 1.0, num_steps: int = 1000,
            beta: float = 0.98, diverge_factor: float = 4.0, verbose: int = 0,
            finder: LRFinder | None = None) -> LRFindResult:
    """Run the range test on a compiled model and return the curve with a suggested rate.

    ``dataset`` yields plain minibatches (at least ``num_steps`` of them; a repeating train split
    is best). The model and its optimizer are left exactly as they were. ``finder`` is an
    :class:`~kmlp.training.callbacks.lr_finder.LRFinder` to use instead of one made from the other arguments.
    """
    finder = finder or LRFinder(start_lr, end_lr, num_steps, beta=beta, diverge_factor=diverge_factor)
    model.fit(dataset, steps_per_epoch=finder.num_steps, epochs=1, callbacks=[finder], verbose=verbose,
              shuffle=False)  # the dataset is shuffled already, or meant to be in order
    if not finder.rates:
        raise ValueError("the range test ran no steps (is the dataset empty?)")
    floor_lr, floor_loss = valley_floor(finder.rates, finder.losses)
    return LRFindResult(rates=finder.rates, losses=finder.losses, smoothed=finder.smoothed,
                        suggested_lr=suggest_lr(finder.rates, finder.losses), floor_lr=floor_lr,
                        floor_loss=floor_loss, diverged=finder.diverged, start_lr=finder.start_lr,
                        end_lr=finder.end_lr, num_steps=finder.num_steps)


def range_test(config, data, start_lr: float = 1e-3, end_lr: float = 1.0, num_steps: int = 1000,
               out_dir="saved_models/lr_find") -> tuple[LRFindResult, Path, Path]:
    """The range test on a fresh model of ``config`` (on its :class:`~kmlp.data.pipeline.NamesData`), with
    the curve written to ``out_dir`` as lr_find.csv, lr_find.png and TensorBoard logs (``logs/``,
    see :func:`kmlp.training.logs.write_range_test`): ``(result, csv, png)``.

    ``out_dir`` may be new, empty or hold an earlier test's files; anything else is refused before
    any work. A test whose loss diverged before it fell raises :class:`kmlp.config.ConfigError`
    (there is nothing to read a rate from) and writes nothing.
    """
    from kmlp.errors import ConfigError
    from kmlp.plots import plot_lr_find
    from kmlp.runs import folders, lock
    from kmlp.training import logs
    from kmlp.training.setup import prepare

    finder = LRFinder(start_lr, end_lr, num_steps)  # checks the range before any work
    out_dir = folders.check_out_dir(out_dir, kind=KIND)
    with lock.RunLock(out_dir):
        setup = prepare(config, data, log=lambda *_: None)
        try:
            result = lr_find(setup.model, setup.train_dataset(steps_per_call=1), finder=finder)
        except ValueError as e:  # the loss was never finite
            raise ConfigError(f"{e} (now {start_lr:g})") from None
        if result.diverged and result.floor_at_start:
            raise ConfigError(f"the loss diverged within {len(result.rates)} steps, at lr "
                              f"{result.rates[-1]:.3g}, before it fell; try a smaller --start-lr "
                              f"(now {start_lr:g}); nothing was written")
        staging = folders.staging_dir(out_dir)
        try:
            result.write_csv(staging / CSV_FILE)
            plot_lr_find(staging / PLOT_FILE, result, title=(
                f"Learning-rate range test: {setup.config.optimizer}, batch {setup.config.batch_size}, "
                f"{setup.model.count_params():,} parameters"))
            logs.write_range_test(staging / LOGS_DIR, result, setup.config.to_dict())
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        folders.publish(staging, out_dir, kind=KIND)
    return result, out_dir / CSV_FILE, out_dir / PLOT_FILE
