"""kmlp.cli.flags: flags over --config over presets, and how long kmlp train trains."""

from kmlp.cli.flags import DEFAULT_MINUTES, train_config_from_args
from kmlp.cli.main import build_parser
from kmlp.config import Config, preset
from kmlp.utils import atomic


def train_config(*flags) -> Config:
    return train_config_from_args(build_parser().parse_args(["train", *map(str, flags)]))


def test_no_flags_means_the_default_preset_for_a_few_minutes():
    assert DEFAULT_MINUTES == 3 and train_config() == preset("default").replace(minutes=3)
    assert train_config("--lr", "0.01") == preset("default").replace(lr=0.01, minutes=3)


def test_a_preset_a_config_file_or_a_length_means_steps_unless_minutes_are_asked(tmp_path):
    assert train_config("--preset", "default") == preset("default")
    assert train_config("--steps", "100") == preset("default").replace(steps=100)
    assert train_config("--epochs", "2") == preset("default").replace(steps=None, epochs=2)
    assert train_config("--preset", "best", "--minutes", "10") == preset("best").replace(minutes=10)
    run_config = tmp_path / "config.json"  # a --minutes run's config.json: the steps it ran, no minutes
    atomic.write_json(run_config, {"config": preset("default").replace(steps=3750).to_dict()})
    assert train_config("--config", run_config) == preset("default").replace(steps=3750)
    assert train_config("--config", run_config, "--minutes", "3") == preset("default").replace(minutes=3, steps=3750)


def test_jit_and_precision_flags_turn_the_best_preset_back_into_its_float32_recipe():
    assert preset("best").precision == "mixed_bfloat16" and not preset("best").jit_compile
    old = train_config("--preset", "best", "--precision", "float32", "--jit", "--steps", 12000)
    assert (old.precision, old.jit_compile, old.steps) == ("float32", True, 12000)
    assert train_config("--jit", "--no-jit").jit_compile is False  # the last flag given wins


def test_flags_override_the_preset_and_leave_the_rest():
    config = train_config("--preset", "lecture", "--lr", "0.05", "--decay-at", "none", "--n-layers", "2")
    assert (config.lr, config.decay_at, config.n_layers) == (0.05, [], 2)
    assert config.replace(lr=0.1, decay_at=[100_000], n_layers=1) == preset("lecture")
    config = train_config("--preset", "best", "--epochs", "2")
    assert (config.epochs, config.steps) == (2, None)


def test_a_partial_config_file_changes_only_what_it_sets(tmp_path):
    path = tmp_path / "partial.json"
    path.write_text('{"dropout": 0.25, "n_layers": 2}')
    assert train_config("--preset", "best", "--config", path) == preset("best").replace(dropout=0.25, n_layers=2)
    assert train_config("--config", path, "--dropout", "0.3") == preset("default").replace(dropout=0.3, n_layers=2)


def test_a_full_config_file_wins_over_the_preset(tmp_path):
    tuned = preset("default").replace(n_layers=2, norm="layer", dropout=0.1, lr=2e-3)
    path = tmp_path / "tuned.json"
    atomic.write_json(path, tuned.to_dict())
    assert train_config("--preset", "lecture", "--config", path) == tuned


def test_the_split_stays_put_when_the_seed_changes():
    assert (train_config("--seed", "3").seed, train_config("--seed", "3").split_seed) == (3, 42)
    assert train_config("--split-seed", "5").split_seed == 5

