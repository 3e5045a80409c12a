"""Early stopping: when it is on, that it ends with the best weights, and that they survive --resume."""

import csv

import numpy as np
import pytest
from test_budget import InterruptAfter  # Ctrl-C once the backup has recorded an epoch

from kmlp.config import Config
from kmlp.runs.rundir import load_run
from kmlp.training.small_lists import MIN_DEV_NAMES, SMALL_LIST_NAMES, dev_note, patience_steps
from kmlp.training.train import train

QUIET = dict(verbose=0, log=lambda *_: None)
# A model that overfits 26 names fast: early stopping has something to stop.
OVERFITS = Config(block_size=3, n_embd=8, n_hidden=64, batch_size=16, steps=200, steps_per_call=5,
                  optimizer="adam", lr=0.01, decay_at=[], early_stopping=25, jit_compile=False)


def dev_losses(run_dir):
    with open(run_dir / "history.csv", newline="") as f:
        return [float(row["val_loss"]) for row in csv.DictReader(f)]


def test_it_is_on_for_fine_tuning_and_small_lists_unless_set():
    assert patience_steps(None, False, SMALL_LIST_NAMES, 4500, 250) == 0  # a large list: off
    assert patience_steps(None, False, SMALL_LIST_NAMES - 1, 4500, 250) == 900  # a fifth of the run
    assert patience_steps(None, True, 10**6, 4500, 250) == 900
    assert patience_steps(None, True, 10, 100, 50) == 50  # one evaluation at least
    assert patience_steps(0, True, 10, 4500, 250) == 0 and patience_steps(70, False, 10**6, 4500, 250) == 70
    assert dev_note(MIN_DEV_NAMES) is None and f"only {MIN_DEV_NAMES - 1} names" in dev_note(MIN_DEV_NAMES - 1)


def test_it_stops_and_keeps_the_weights_of_the_best_dev_loss(tiny_names_file, tmp_path):
    said = []
    result = train(OVERFITS, data_path=tiny_names_file, out_dir=tmp_path / "run", verbose=0, log=said.append)
    record, losses = result.metrics["early_stopping"], dev_losses(tmp_path / "run")
    assert record["stopped_at_step"] < 200 and record["best_step"] < record["stopped_at_step"] and result.metrics["steps"] == record["stopped_at_step"]
    assert record["best_step"] == (int(np.argmin(losses)) + 1) * 10
    assert result.metrics["dev_loss"] == pytest.approx(min(losses), abs=1e-5)  # the best, not the last
    assert result.metrics["dev_loss"] < losses[-1]
    assert any(line.startswith("note: the dev split has only") for line in said)  # 3 dev names
    assert any(line.startswith("early stopping (patience 25 steps): stopped at step") for line in said)
    table = np.loadtxt(tmp_path / "run" / "logs" / "train" / "embedding.tsv", delimiter="\t", dtype=np.float32)
    kept = load_run(tmp_path / "run").model.get_layer("embedding").get_weights()[0]
    np.testing.assert_array_equal(table, kept)  # the projector shows the weights kept, not the last epoch's


@pytest.mark.parametrize("at_epoch", [0, 3])  # before the best epoch, and after it
def test_a_resumed_training_ends_with_the_same_best_weights(tiny_names_file, tmp_path, at_epoch):
    whole = train(OVERFITS, data_path=tiny_names_file, out_dir=tmp_path / "whole", **QUIET)
    with pytest.raises(KeyboardInterrupt):
        train(OVERFITS, data_path=tiny_names_file, out_dir=tmp_path / "cut", callbacks=[InterruptAfter(at_epoch)], **QUIET)
    resumed = train(OVERFITS, data_path=tiny_names_file, out_dir=tmp_path / "cut", resume=True, **QUIET)
    assert resumed.metrics["resumed_at_step"] == (at_epoch + 1) * 10
    assert resumed.metrics["early_stopping"] == whole.metrics["early_stopping"]
    for a, b in zip(load_run(tmp_path / "whole").model.get_weights(), load_run(tmp_path / "cut").model.get_weights()):
        np.testing.assert_array_equal(a, b)
