"""kmlp.training.tune: the search space, a tiny search end to end, the time budget, and the untouched test split."""

import csv
import time
from collections.abc import Mapping

import keras
import keras_tuner
import numpy as np
import pytest

from kmlp.cli.main import build_parser, config_from_args
from kmlp.config import load_config_file
from kmlp.data import pipeline
from kmlp.runs.folders import check_out_dir
from kmlp.training.train import train
from kmlp.training.tune import Deadline, config_for, declare_space, tune

# KerasTuner 1.4.8 calls threading.currentThread().getName(), deprecated since Python 3.10.
pytestmark = [pytest.mark.filterwarnings("ignore:currentThread:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:getName:DeprecationWarning")]


class SplitGuard(Mapping):
    """A split -> value mapping that records (and refuses) every read of the test split."""

    def __init__(self, values: dict, reads: list):
        self._values, self._reads = values, reads

    def __getitem__(self, split):
        if split == "test":
            self._reads.append(split)
            raise AssertionError("the test split was read")
        return self._values[split]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)


def test_every_point_of_the_space_is_a_valid_configuration():
    hp = declare_space(keras_tuner.HyperParameters())
    config = config_for(hp.values, steps=4000)
    assert (config.block_size, config.n_embd, config.n_hidden, config.optimizer) == (8, 24, 512, "adam")
    assert config.steps == 4000 and config.decay_at == [2400, 3400]
    tuned = config_for({**hp.values, "weight_decay": 0.1, "dropout": 0.30000000000000004,
                        "schedule": "cosine", "tuner/epochs": 3}, steps=10)
    assert (tuned.optimizer, tuned.weight_decay, tuned.dropout) == ("adamw", 0.1, 0.3)
    assert (tuned.schedule, tuned.decay_at) == ("cosine", [])


def test_the_hierarchical_space_searches_its_fusing_and_levels_and_every_point_is_valid():
    hp = declare_space(keras_tuner.HyperParameters(), arch="hierarchical")
    assert "block_size" not in hp.values and hp.values["arch"] == "hierarchical"
    config = config_for(hp.values, steps=4000)
    assert (config.arch, config.fuse, config.n_layers, config.block_size) == ("hierarchical", 2, 3, 8)
    contexts = {config_for({**hp.values, "fuse": fuse, "n_layers": levels}, steps=10).block_size
                for fuse in (2, 3) for levels in (2, 3)}
    assert contexts == {4, 8, 9, 27}


def test_a_tiny_hierarchical_search_gives_a_config_train_accepts(tiny_names_file, tmp_path):
    result = tune(tiny_names_file, tmp_path / "tuning", max_trials=2, max_minutes=10, steps=6, seed=3,
                  algorithm="random", log=lambda *_: None, arch="hierarchical")
    assert len(result.rows) == 2 and all(row["status"] == "ok" for row in result.rows)
    assert (tmp_path / "tuning" / "results.md").read_text().startswith("| arch | fuse | n_layers |")
    config = config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "tuning" /
                                                                                  "best_config.json")]))
    assert config == result.best_config and config.arch == "hierarchical"
    assert config.block_size == config.fuse ** config.n_layers


def test_deadline_stops_training_after_the_call_that_passes_it():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    stop = Deadline(time.monotonic() - 1)
    history = model.fit(np.zeros((8, 3)), np.zeros(8), batch_size=4, epochs=5, verbose=0, callbacks=[stop])
    assert stop.stopped and len(history.history["loss"]) == 1


def test_tiny_search_writes_tables_and_a_config_train_accepts(tiny_names_file, tmp_path, monkeypatch):
    test_reads, splits_served = [], []
    original_from_file = pipeline.NamesData.from_file.__func__
    original_dataset = pipeline.NamesData.dataset

    def guarded_from_file(cls, *args, **kwargs):
        data = original_from_file(cls, *args, **kwargs)
        data.streams = SplitGuard(data.streams, test_reads)
        data.words = SplitGuard(data.words, test_reads)
        return data

    def recorded_dataset(self, split, *args, **kwargs):
        splits_served.append(split)
        return original_dataset(self, split, *args, **kwargs)

    out = tmp_path / "tuning"
    with monkeypatch.context() as patch:
        patch.setattr(pipeline.NamesData, "from_file", classmethod(guarded_from_file))
        patch.setattr(pipeline.NamesData, "dataset", recorded_dataset)
        result = tune(tiny_names_file, out, max_trials=2, max_minutes=10, steps=9, seed=1,
                      algorithm="random", log=lambda *_: None)

    assert test_reads == [] and set(splits_served) == {"train", "dev"}
    assert len(result.rows) == 2 and all(row["status"] == "ok" for row in result.rows)
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["trial"] for row in table] == [row["trial"] for row in result.rows]
    for column in ("n_hidden", "lr", "params", "train_loss", "dev_loss", "seconds"):
        assert all(row[column] for row in table), column
    markdown = (out / "results.md").read_text().splitlines()
    assert markdown[0].startswith("| block_size |") and len(markdown) == 2 + 2
    assert min(float(row["dev_loss"]) for row in table) == round(result.best["dev_loss"], 4)
    check_out_dir(out, kind="tune")  # its manifest lists all it wrote, KerasTuner's tuner/ included

    best = out / "best_config.json"
    assert load_config_file(best) == result.best_config
    config = config_from_args(build_parser().parse_args(["train", "--config", str(best)]))
    assert config == result.best_config
    trained = train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", verbose=0, log=lambda *_: None)
    assert trained.metrics["steps"] == 9 and (tmp_path / "run" / "model.keras").is_file()


def test_time_budget_ends_the_search_and_a_cut_trial_is_never_best(tiny_names_file, tmp_path):
    out = tmp_path / "tuning"
    result = tune(tiny_names_file, out, max_trials=5, max_minutes=1e-4, steps=500, seed=1,
                  algorithm="random", log=lambda *_: None)
    assert len(result.rows) == 1 and result.rows[0]["status"].startswith("stopped at the time limit")
    assert result.best is None and not (out / "best_config.json").exists()
    assert (out / "results.md").read_text().count("stopped at the time limit") == 1


def test_a_short_hyperband_trial_that_wins_is_recorded_with_the_full_steps(tiny_names_file, tmp_path):
    out = tmp_path / "tuning"
    result = tune(tiny_names_file, out, max_trials=2, max_minutes=10, steps=18, seed=1, algorithm="hyperband",
                  log=lambda *_: None)
    assert {row["steps"] for row in result.rows} == {2}  # Hyperband's first round: a ninth of --steps
    assert result.best_config.steps == 18 == load_config_file(out / "best_config.json").steps
    assert all(0 < m < 18 for m in result.best_config.decay_at)
