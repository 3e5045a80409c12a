"""kmlp.config: presets, configuration files, and the rules every option is checked by."""

import json

import pytest

from kmlp.config import (MAX_SEED, PRESETS, Config, check_range_test, check_search, check_seed,
                         load_config_file, preset)
from kmlp.errors import ConfigError
from kmlp.utils import atomic


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_configuration(name):
    config = preset(name).validate()
    assert config.steps and all(0 < m < config.steps for m in config.decay_at)


def test_lecture_preset_is_the_lecture_recipe():
    config = preset("lecture")
    assert (config.block_size, config.n_embd, config.n_hidden, config.n_layers) == (3, 10, 200, 1)
    assert (config.batch_size, config.steps, config.optimizer, config.lr) == (32, 200_000, "sgd", 0.1)
    assert (config.decay_at, config.decay_factor) == ([100_000], 0.1)
    assert config.init == "normal" and config.dropout == 0 and config.norm == "none"


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'; choose one of: best, default, fast, lecture"):
        preset("huge")


def test_a_config_file_sets_what_it_holds_over_a_base(tmp_path):
    tuned = preset("default").replace(n_layers=2, norm="layer", dropout=0.1, weight_decay=0.01, lr=2e-3)
    path = tmp_path / "tuned.json"
    atomic.write_json(path, tuned.to_dict())
    assert load_config_file(path) == tuned == load_config_file(path, base=preset("lecture"))
    partial = tmp_path / "partial.json"
    partial.write_text('{"dropout": 0.25}')
    assert load_config_file(partial, base=preset("best")) == preset("best").replace(dropout=0.25)
    assert load_config_file(partial) == Config(dropout=0.25)


def test_a_runs_config_json_is_accepted(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": preset("fast").to_dict(), "preset": "fast"}))
    assert load_config_file(path) == preset("fast")


@pytest.mark.parametrize("text, message", [
    ('{"n_hiden": 64}', r"bad\.json: unknown option\(s\): n_hiden"),
    ("{n_hidden: 64", r"bad\.json: not valid JSON"),
    ("[1, 2]", r"bad\.json: expected a JSON object"),
])
def test_bad_config_file_names_the_file(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config_file(path)


def test_the_split_seed_is_its_own_option():
    assert Config(seed=7).split_seed == 42
    assert Config.from_dict({"seed": 7, "split_seed": 3}).split_seed == 3
    assert Config.from_dict({"seed": 7}).split_seed == 42  # (old run files: see kmlp.runs.rundir.load_run)


@pytest.mark.parametrize("changes, message", [
    (dict(init="he"), "--init must be glorot or normal"),
    (dict(dropout=1.5), r"--dropout must be in \[0, 1\)"),
    (dict(rdrop=-1.0), "--rdrop must be a number >= 0"),
    (dict(dropout=0.0, rdrop=1.0), "--rdrop needs --dropout above 0"),
    (dict(n_layers=0), "--n-layers must be a positive integer"),
    (dict(steps=None, epochs=0), "--epochs must be a positive integer"),
    (dict(lr=float("nan")), "--lr must be a positive number"),
    (dict(weight_decay=-1.0), "--weight-decay must be a number >= 0"),
    (dict(decay_at=[0]), "--decay-at takes positive step counts"),
    (dict(schedule="linear"), "--schedule must be step or cosine"),
    (dict(seed=-1), "--seed must be an integer from 0 to 4294967295"),
    (dict(split_seed=2**40), "--split-seed must be"),
    (dict(plateau_patience=2, decay_factor=1.5), "must then be below 1"),
])
def test_an_out_of_range_value_names_the_flag(changes, message):
    with pytest.raises(ConfigError, match=message):
        preset("default").replace(**changes).validate()


def test_seeds_range_over_what_every_generator_takes():
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    for bad in (-1, MAX_SEED + 1, 1.5, True, "3"):
        with pytest.raises(ConfigError, match="--seed"):
            check_seed(bad)


def test_range_test_and_search_rules():
    check_range_test(1e-3, 1.0, 2)
    with pytest.raises(ConfigError, match=r"--end-lr \(0.5\) must be above --start-lr \(1\)"):
        check_range_test(1.0, 0.5, 100)
    check_search(1, 0.5, 10, 0, "random")
    with pytest.raises(ConfigError, match="--max-minutes must be a positive number"):
        check_search(1, float("inf"), 10, 0, "random")
    with pytest.raises(ConfigError, match="--algorithm must be hyperband or random"):
        check_search(1, 1, 10, 0, "grid")


def test_run_length_rules():
    assert preset("lecture").replace(minutes=0.5).validate().steps == 200_000  # where decay_at is placed for
    Config(steps=None, minutes=1, decay_at=[]).validate()
    for changes, message in ((dict(minutes=0), "--minutes must be a positive number, got 0"),
                             (dict(minutes=float("inf")), "--minutes must be a positive number"),
                             (dict(minutes=1, steps=None, epochs=2), "--minutes and --epochs both set how long"),
                             (dict(minutes=1, steps=None), "--decay-at with --minutes needs --steps")):
        with pytest.raises(ConfigError, match=message):
            Config(**changes).validate()
