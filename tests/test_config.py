"""kmlp.config: presets, flags over presets, configuration files, and their errors."""

import json

import pytest

from conftest import run_cli
from kmlp import runs
from kmlp.cli import build_parser, config_from_args
from kmlp.config import PRESETS, Config, ConfigError, load_config_file, preset


def train_config(*flags) -> Config:
    return config_from_args(build_parser().parse_args(["train", *flags]))


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


def test_no_flags_means_the_default_preset():
    assert train_config() == preset("default")


def test_flags_override_the_preset_and_leave_the_rest():
    config = train_config("--preset", "lecture", "--lr", "0.05", "--decay-at", "none", "--n-layers", "2")
    assert (config.lr, config.decay_at, config.n_layers) == (0.05, [], 2)
    assert config.replace(lr=0.1, decay_at=[100_000], n_layers=1) == preset("lecture")


def test_epochs_flag_replaces_the_presets_steps():
    config = train_config("--preset", "best", "--epochs", "2")
    assert (config.epochs, config.steps) == (2, None)


def test_config_file_round_trip_and_flags_over_it(tmp_path):
    tuned = preset("default").replace(n_layers=2, norm="layer", dropout=0.1, optimizer="adamw",
                                      weight_decay=0.01, lr=2e-3)
    path = tmp_path / "tuned.json"
    runs.write_json(path, tuned.to_dict())
    assert load_config_file(path) == tuned
    assert train_config("--preset", "lecture", "--config", str(path)) == tuned  # the file wins
    assert train_config("--config", str(path), "--dropout", "0.3") == tuned.replace(dropout=0.3)


def test_a_runs_config_json_is_accepted(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": preset("fast").to_dict(), "preset": "fast"}))
    assert load_config_file(path) == preset("fast")


def test_the_split_stays_put_when_the_seed_changes():
    assert Config(seed=7).split_seed == 42
    assert Config.from_dict({"seed": 7, "split_seed": 3}).split_seed == 3
    # A file written before split_seed existed split its names with its seed.
    assert Config.from_dict({"seed": 7}).split_seed == 7
    assert (train_config("--seed", "3").seed, train_config("--seed", "3").split_seed) == (3, 42)
    assert train_config("--split-seed", "5").split_seed == 5


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'; choose one of: best, default, fast, lecture"):
        preset("huge")


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


def test_out_of_range_value_names_the_flag():
    with pytest.raises(ConfigError, match="--init must be glorot or normal"):
        preset("default").replace(init="he").validate()
    with pytest.raises(ConfigError, match="--dropout must be in"):
        train_config("--dropout", "1.5")
    with pytest.raises(ConfigError, match="--rdrop must be >= 0"):
        train_config("--rdrop", "-1")
    with pytest.raises(ConfigError, match="--rdrop needs --dropout above 0"):
        train_config("--preset", "fast", "--rdrop", "1")


def test_cli_unknown_preset_is_one_line_and_exit_2(tmp_path):
    done = run_cli("train", "--preset", "huge", "--out", tmp_path / "run")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "kmlp: error: unknown preset 'huge'; choose one of: best, default, fast, lecture"]
    assert not (tmp_path / "run").exists()
