"""What training does for a small list, without TensorFlow (the command line's help names it): when
early stopping is on and for how long (:func:`patience_steps`), and when the dev split is too small
to judge by (:func:`dev_note`). The callback itself: :mod:`kmlp.training.callbacks.early_stopping`.
"""

from __future__ import annotations

# Early stopping is on by default when fine-tuning, and for a train split of fewer names than this,
# where a run of a preset's length overfits; on a larger list it would rarely stop, and its best
# weights would only move a run's results away from the ones published for it.
SMALL_LIST_NAMES = 5_000
DEFAULT_PATIENCE_SHARE = 0.2  # default patience: this share of the run's steps
# A dev split of fewer names than this gives a loss too noisy to choose a model by: a note says so.
MIN_DEV_NAMES = 50


def patience_steps(early_stopping: int | None, fine_tuning: bool, train_names: int, steps: int,
                   steps_per_epoch: int) -> int:
    """The patience, in optimizer steps, of a run of ``steps`` (0: no early stopping): the
    configured ``early_stopping``; if it is None, on when ``fine_tuning`` or the train split is small
    (:data:`SMALL_LIST_NAMES`), for :data:`DEFAULT_PATIENCE_SHARE` of the run, one evaluation at least."""
    if early_stopping is not None:
        return early_stopping
    if not fine_tuning and train_names >= SMALL_LIST_NAMES:
        return 0
    return max(steps_per_epoch, int(steps * DEFAULT_PATIENCE_SHARE))


def dev_note(dev_names: int) -> str | None:
    """A one-line note when the dev split is too small to judge a model by, else None."""
    if dev_names >= MIN_DEV_NAMES:
        return None
    return (f"note: the dev split has only {dev_names} name{'s' * (dev_names != 1)} (under {MIN_DEV_NAMES}): "
            f"its loss, and early stopping, which follows it, are a rough guide; a longer list judges better")
