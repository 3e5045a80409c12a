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



def test_the_lecture_series_presets_and_the_hierarchical_flags():
    part5 = train_config("--preset", "part5")
    assert (part5.arch, part5.fuse, part5.block_size, part5.n_layers, part5.init) == ("hierarchical", 2, 8, 3, "fan_in")
    assert (part5.norm_momentum, part5.norm_epsilon, part5.decay_at, part5.steps) == (0.9, 1e-5, [150_000], 200_000)
    part3 = train_config("--preset", "part3")
    assert (part3.arch, part3.norm, part3.init, part3.norm_momentum) == ("mlp", "batch", "kaiming", 0.999)
    wider = train_config("--preset", "part5", "--fuse", "4", "--block-size", "16", "--n-layers", "2",
                         "--norm-momentum", "0.99", "--norm-epsilon", "0.001")
    assert wider == part5.replace(fuse=4, block_size=16, n_layers=2, norm_momentum=0.99, norm_epsilon=1e-3)
    # the default preset's context of 8 over 3 layers fuses two positions a level as it is
    assert train_config("--arch", "hierarchical").replace(arch="mlp") == train_config()


def test_hierarchical_refusals_are_one_line_before_tensorflow_loads(tiny_names_file, tmp_path):
    from cli_helpers import assert_one_line_error, main_in_a_fresh_process

    (tmp_path / "five.json").write_text('{"arch": "hierarchical", "block_size": 5}')
    train = ["train", "--data", tiny_names_file, "--out", tmp_path / "run"]
    cases = [
        ([*train, "--arch", "hierarchical", "--block-size", "6"], "--arch hierarchical fuses --fuse 2 positions at "
                                                                  "each of --n-layers 3 levels: --block-size must be 8, got 6"),
        ([*train, "--preset", "part5", "--n-layers", "2"], "--block-size must be 4, got 8"),
        ([*train, "--fuse", "3"], "--fuse applies to --arch hierarchical only, got --fuse 3 with --arch mlp"),
        ([*train, "--config", tmp_path / "five.json"], "five.json: arch hierarchical fuses fuse 2 positions at "
                                                       "each of n_layers 3 levels: block_size must be 8, got 5"),
        (["tune", "--arch", "wavenet", "--out", tmp_path / "tuning"], "--arch"),
    ]
    results, tensorflow = main_in_a_fresh_process(*(argv for argv, _ in cases))
    for (argv, needle), (code, err) in zip(cases, results):
        assert_one_line_error(code, err, needle)
    assert tensorflow is False and sorted(p.name for p in tmp_path.iterdir()) == ["five.json", "tiny.txt"]
