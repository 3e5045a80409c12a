"""kmlp.config: presets, configuration files, and the rules every option is checked by."""

import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kmlp.config import (MAX_SEED, PRESETS, Config, check_fits_in_memory, check_model_size, check_range_test,
                         check_search, check_seed, load_config_file, parameter_count, preset, training_memory)
from kmlp.errors import ConfigError
from kmlp.utils import atomic
from kmlp.utils.jsonfile import MAX_JSON_BYTES


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
    (dict(init="he"), "--init must be glorot, normal, kaiming or fan_in"),
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
    (dict(arch="wavenet"), "--arch must be mlp or hierarchical"),
    (dict(fuse=3), "^--fuse applies to --arch hierarchical only, got --fuse 3 with --arch mlp$"),
    (dict(arch="hierarchical", fuse=1), "--fuse must be an integer of at least 2"),
    (dict(arch="hierarchical", block_size=6), "^--arch hierarchical fuses --fuse 2 positions at each of "
                                              "--n-layers 3 levels: --block-size must be 8, got 6$"),
    (dict(arch="hierarchical", n_layers=100), "--block-size must be 2\\*\\*100, got 8$"),
    (dict(norm_momentum=1.0), r"--norm-momentum must be in \[0, 1\)"),
    (dict(norm_epsilon=0.0), "--norm-epsilon must be a positive number"),
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


# ---------------------------------------------------------------------------------------------
# Values that cannot be represented, and trainings that cannot fit in memory

BEYOND_INT64 = 10**20


@pytest.mark.parametrize("option, flag", [("block_size", "--block-size"), ("n_hidden", "--n-hidden"),
                                          ("steps_per_call", "--steps-per-call"), ("steps", "--steps"),
                                          ("batch_size", "--batch-size"), ("plateau_patience", "--plateau-patience")])
def test_a_count_beyond_int64_names_the_flag(option, flag):
    with pytest.raises(ConfigError, match=f"^{flag} must be below 2\\*\\*63 .*, got {BEYOND_INT64}$"):
        Config(**{option: BEYOND_INT64})
    Config(**{option: 2**63 - 1}).validate()  # representable: refused, if at all, by what it needs


def test_counts_of_the_range_test_and_the_search_are_bounded_too():
    with pytest.raises(ConfigError, match=r"--num-steps must be below 2\*\*63"):
        check_range_test(1e-3, 1.0, BEYOND_INT64)
    with pytest.raises(ConfigError, match=r"--num-steps 1000000000: the rates and losses of the range test "
                                          r"would take at least .* GiB of memory, more than this machine's 1 GiB"):
        check_range_test(1e-3, 1.0, 10**9, memory=2**30)
    with pytest.raises(ConfigError, match=r"--steps must be below 2\*\*63"):
        check_search(1, 1.0, BEYOND_INT64, 0, "random")


def test_the_parameter_count_is_the_models():
    assert parameter_count(27, 3, 10, 200, 1) == 11_897  # the lecture's model (see kmlp.models.mlp)


def test_a_training_that_cannot_fit_in_memory_names_the_flags_of_its_largest_part():
    small = 16 * 2**30
    check_fits_in_memory(preset("best"), 27, memory=small)
    with pytest.raises(ConfigError, match=r"^a training with --block-size 3, --n-embd 10, --n-hidden 1000000000, "
                                          r"--n-layers 1, --optimizer 'sgd' needs at least .* GiB of memory \(.* "
                                          r"for the weights, their gradients and the optimizer's state; with a "
                                          r"vocabulary of 2 tokens, the smallest\), more than this machine's 16 GiB$"):
        check_fits_in_memory(Config(n_hidden=10**9), memory=small)
    with pytest.raises(ConfigError, match=r"^a training with --batch-size 10000000000, .* for one minibatch's "
                                          r"activations; with a vocabulary of 27 tokens\)"):
        check_fits_in_memory(Config(batch_size=10**10), 27, memory=small)
    with pytest.raises(ConfigError, match="^a training with --steps-per-call 1000000000, --batch-size 32"):
        check_fits_in_memory(Config(steps_per_call=10**9), memory=small)
    # R-Drop runs every example twice, Adam keeps two moments: each doubles its part
    one_pass, two_passes = (training_memory(preset("best").replace(rdrop=r), 27)[1][1] for r in (0.0, 1.0))
    assert two_passes == 2 * one_pass
    plain, adam = (training_memory(Config(optimizer=o))[0][1] for o in ("sgd", "adam"))
    assert adam == 2 * plain
    # the hierarchical model's weights, and its levels' outputs: 4, 2 and 1 vectors an example at context 8
    weights, activations, _ = training_memory(preset("part5"), 27)
    assert weights[1] == 77_347 * 4 * 2 and activations[1] == (8 * 24 + 2 * (4 + 2 + 1) * 128 + 2 * 27) * 4 * 32


def test_a_model_whose_weights_cannot_fit_is_refused_before_it_is_built():
    check_model_size(27, 3, 10, 200, 1, memory=2**30)
    with pytest.raises(ConfigError, match=r"^a model with --block-size 3, --n-embd 10, --n-hidden 100000000, "
                                          r"--n-layers 1 needs at least .* \(its weights; with a vocabulary of 27 "
                                          r"tokens\), more than this machine's 1 GiB$"):
        check_model_size(27, 3, 10, 10**8, 1, memory=2**30)


# ---------------------------------------------------------------------------------------------
# A configuration file's mistakes name the file and its key, in JSON's spelling


@pytest.mark.parametrize("text, message", [
    ('{"steps": true}', "steps must be a positive integer, got true"),
    ('{"n_hidden": 1e20}', r"n_hidden must be a positive integer, got 1e\+20"),
    ('{"n_hidden": 100000000000000000000}', r"n_hidden must be below 2\*\*63 .*, got 100000000000000000000"),
    ('{"rdrop": 1, "dropout": 0}', "rdrop needs dropout above 0"),
    ('{"norm": null}', "norm must be none, batch or layer, got null"),
    ('{"lr": NaN}', "lr must be a positive number, got NaN"),
    ('{"jit_compile": "yes"}', "jit_compile must be true or false, got 'yes'"),
    ('{"n_hidden": ' + "9" * 5000 + "}", r"not valid JSON \(Exceeds the limit \(4300 digits\)"),
    ("[" * 100_000 + "]" * 100_000, r"not valid JSON \(nested too deeply\)"),
    ('{"config": 3}', "unknown option\\(s\\): config"),
    ('{"a\\nb": 1}', r"unknown option\(s\): 'a\\nb'"),
])
def test_a_config_files_mistake_names_the_file_and_its_key(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {message}") as refused:
        load_config_file(path)
    assert "\n" not in str(refused.value) and "--" not in str(refused.value)


def test_a_config_file_that_is_no_regular_file_or_too_large_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # reading it would wait for a writer forever
    (tmp_path / "huge.json").write_text(" " * (MAX_JSON_BYTES + 1))
    for name, message in (("fifo", "not a regular file"), ("huge.json", "larger than 16,777,216 bytes"),
                          (".", "not a regular file"), ("missing.json", "no such file")):
        with pytest.raises(ConfigError, match=f"{re.escape(str(tmp_path / name))}: {message}"):
            load_config_file(tmp_path / name)


# ---------------------------------------------------------------------------------------------
# Whatever a configuration file holds: a Config, or one line naming the file

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70) | st.floats()
           | st.text(max_size=8) | st.sampled_from(["batch", "adam", "cosine", "mixed_bfloat16"]))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
OPTIONS = st.dictionaries(st.sampled_from(sorted(Config.__dataclass_fields__)) | st.text(max_size=6),
                          SCALARS | JSON_VALUES, max_size=6)
DOCUMENTS = OPTIONS | OPTIONS.map(lambda options: {"config": options}) | JSON_VALUES


def assert_config_or_one_line_naming(path):
    try:
        assert isinstance(load_config_file(path, base=preset("fast")), Config)
    except ConfigError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=DOCUMENTS)
def test_any_json_in_a_config_file_gives_a_config_or_one_line_naming_the_file(tmp_path, document):
    path = tmp_path / "options.json"
    path.write_text(json.dumps(document))
    assert_config_or_one_line_naming(path)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_in_a_config_file_give_a_config_or_one_line_naming_the_file(tmp_path, data):
    path = tmp_path / "options.json"
    path.write_bytes(data)
    assert_config_or_one_line_naming(path)
