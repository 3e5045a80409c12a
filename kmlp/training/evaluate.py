"""Evaluating a saved run: its loss, perplexity and bits per character on one split of a names file.

The figures on the file the run was trained on (known by its SHA-256) belong to the run and go to
metrics.json (``test_loss``, ``test_perplexity``, ...); those on any other file go to
evaluations.json with the file and its hash, never over the run's own::

    run = load_run("saved_models/default")
    with RunLock(run.path):             # one process writes a run at a time
        evaluation = evaluate_run(run, "test")
        record_evaluation(run, evaluation)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from kmlp.data.pipeline import NamesData
from kmlp.data.splits import SPLITS
from kmlp.errors import ConfigError, RunError
from kmlp.runs.rundir import EVALUATIONS_FILE, METRICS_FILE, Run, add_evaluation, update_metrics
from kmlp.training.setup import EVAL_BATCH, evaluate_loss


@dataclass(frozen=True)
class Evaluation:
    """The loss of a run's model on one split of a names file."""

    split: str
    data: Path          # the names file read
    data_sha256: str
    own_data: bool      # the file the run was trained on: the figures belong in metrics.json
    loss: float         # mean cross-entropy per token in nats, the end of a name counted as one
    examples: int       # tokens predicted
    names: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_char(self) -> float:
        return self.loss / math.log(2)

    def figures(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_char": self.bits_per_char}


def evaluate_run(run: Run, split: str = "dev", data_path: str | os.PathLike | None = None) -> Evaluation:
    """The model's figures on ``split`` of ``data_path`` (default: the file it was trained on),
    split as the run splits it."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(data_path) if data_path else trained_on(run)
    data = NamesData.for_config(path, run.config, vocab=run.vocab)  # read once: its names and its hash
    loss = evaluate_loss(run.model, data.dataset(split, EVAL_BATCH, shuffle=False))
    digest = data.data_sha256
    recorded = run.info.get("data_sha256")
    own = digest == recorded if recorded else \
        path.resolve() == (run.data_path or path).resolve()  # runs from before the hash was kept
    return Evaluation(split=split, data=path, data_sha256=digest, own_data=own, loss=loss,
                      examples=data.num_examples(split), names=data.num_names(split))


def trained_on(run: Run) -> Path:
    """The names file the run was trained on, or the RunError that says it cannot be read."""
    path = run.own_data_path()
    if not path.exists():
        raise RunError(f"{run.path}: trained on {path}, which is missing; pass --data PATH")
    return path


def record_evaluation(run: Run, evaluation: Evaluation) -> Path:
    """Write ``evaluation`` into the run: to metrics.json when it is on the run's own data, else
    appended to evaluations.json. Returns the file written."""
    try:
        if evaluation.own_data:
            update_metrics(run.path, **{f"{evaluation.split}_{k}": v for k, v in evaluation.figures().items()})
            return run.path / METRICS_FILE
        add_evaluation(run.path, {"data": str(evaluation.data.resolve()), "data_sha256": evaluation.data_sha256,
                                  "split": evaluation.split, **evaluation.figures(),
                                  "examples": evaluation.examples})
        return run.path / EVALUATIONS_FILE
    except OSError as e:
        raise RunError(f"{e.filename or run.path}: cannot be written ({e.strerror or e}); the "
                       f"evaluation was not recorded") from None
