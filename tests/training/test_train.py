"""kmlp.training.train and the train/evaluate/sample commands: plans, the shared setup, divergence,
run directories, real-data training (time budgets: test_budget.py)."""

import csv
import json
import math

import numpy as np
import pytest
from conftest import TINY_WORDS, run_cli

from kmlp.cli import main as cli
from kmlp.config import Config, preset
from kmlp.data.pipeline import NamesData
from kmlp.errors import ConfigError, TrainingDiverged
from kmlp.models.mlp import build_model
from kmlp.runs.rundir import load_run
from kmlp.training.results import fit_verdict
from kmlp.training.setup import PARALLEL_WORK, count_weights, plan_training, prepare
from kmlp.training.train import train

QUIET = dict(verbose=0, log=lambda *_: None)

NOISE = ("cuda", "oneDNN", "absl", "cpu_feature_guard", "I0000", "W0000", "E0000", "Traceback",
         "UserWarning", "tensorflow")


def test_plan_puts_total_and_milestones_on_call_boundaries(tiny_names_file):
    data = NamesData.from_file(tiny_names_file, block_size=3)
    for steps, milestones in ((200_000, [100_000]), (20_000, [12_000, 17_000]), (1_234, [617]), (97, [])):
        plan = plan_training(Config(steps=steps, decay_at=milestones), data)
        assert plan.steps == steps == plan.epochs * plan.steps_per_epoch
        assert all(m % plan.steps_per_call == 0 for m in milestones)
        assert 1 <= plan.steps_per_call <= 250
    lecture = plan_training(Config(), NamesData.from_words([f"w{i:05d}x" for i in range(20_000)]))
    assert lecture.steps_per_call == 250
    assert plan_training(Config(steps=64_000, decay_at=[]), data).epochs == 128  # 256 calls: at most 200


@pytest.mark.parametrize("name", ["lecture", "fast", "default", "best", "part3", "part5"])
def test_weight_count_behind_the_thread_choice_matches_the_model(name):
    config = preset(name)
    model = build_model(27, config.block_size, config.n_embd, config.n_hidden, config.n_layers,
                        norm=config.norm, arch=config.arch, fuse=config.fuse)
    matrices = sum(int(np.prod(w.shape)) for w in model.weights if len(w.shape) == 2)
    assert count_weights(config, 27) == matrices
    # small models run each op on one thread; the large presets use every core
    assert (count_weights(config, 27) * config.batch_size >= PARALLEL_WORK) == (name in ("default", "best"))


def test_fit_verdict_reads_the_gap():
    assert fit_verdict(2.00, 2.01, 27).startswith("underfits")
    assert fit_verdict(1.80, 2.00, 27).startswith("overfits")
    assert fit_verdict(2.00, 2.05, 27).startswith("fits well")
    assert fit_verdict(3.40, 3.50, 27).startswith("barely trained: train loss 3.400 is no better than "
                                                  "a uniform guess over the 27 tokens (3.296)")


def test_prepare_refuses_data_built_for_another_context_or_split():
    data = NamesData.from_words(TINY_WORDS, block_size=3)
    for config in (Config(block_size=4), Config(split_seed=1)):
        with pytest.raises(ConfigError, match="the data was built for --block-size 3 and --split-seed 42"):
            prepare(config, data)


def test_a_batch_larger_than_the_train_split_is_recorded_as_it_ran(tiny_names_file, tmp_path):
    said = []
    config = Config(block_size=3, n_embd=4, n_hidden=16, batch_size=4096, steps=5, decay_at=[], jit_compile=False)
    result = train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", verbose=0, log=said.append)
    examples = result.data.num_examples("train")
    assert any(f"--batch-size 4096 is more than the {examples} training examples" in line for line in said)
    assert load_run(tmp_path / "run").config.batch_size == examples == result.metrics["batch_size"]


def test_a_short_run_with_batch_norm_is_saved_as_barely_trained_not_diverged(tiny_names_file, tmp_path):
    said = []
    config = preset("default").replace(steps=20, jit_compile=False)  # batch-norm statistics lag behind
    result = train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", verbose=0, log=said.append)
    assert result.metrics["train_loss"] > math.log(len(result.data.vocab))
    assert (tmp_path / "run" / "model.keras").is_file()
    assert any(line.startswith("barely trained") for line in said), said


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_loss_that_blows_up_is_diverged_and_nothing_is_saved(optimizer, tiny_names_file, tmp_path):
    config = Config(block_size=3, n_embd=4, n_hidden=16, batch_size=8, steps=40, decay_at=[],
                    optimizer=optimizer, lr=1000.0, jit_compile=False)
    with pytest.raises(TrainingDiverged, match="training diverged .the (loss became NaN|training loss rose)"):
        train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.txt"]


SMALL = Config(block_size=3, n_embd=4, n_hidden=16, batch_size=8, steps=60, decay_at=[30], lr=0.1)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A run of SMALL whose train loss is scored on a fixed sample of 40 of its training examples:
    (the result of train(), the run folder, the lines train() said)."""
    from kmlp.training import results

    root = tmp_path_factory.mktemp("small")
    words = root / "tiny.txt"
    words.write_text("\n".join(TINY_WORDS) + "\n", encoding="utf-8")
    said = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(results, "TRAIN_LOSS_EXAMPLES", 40)
        result = train(SMALL, data_path=words, out_dir=root / "run", verbose=0, log=said.append)
    return result, root / "run", said


def test_train_writes_a_complete_run(small_run):
    result, out, _ = small_run
    for name in ("model.keras", "config.json", "history.csv", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"train_loss", "dev_loss", "steps", "seconds", "params"} <= set(metrics)
    assert metrics["steps"] == 60 and metrics["params"] == result.model.count_params()
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert rows and {"loss", "val_loss", "lr"} <= set(rows[0])
    run = load_run(out)
    assert run.vocab == result.data.vocab and run.config == SMALL
    x = result.data.examples("dev")[0]
    for saved, trained in zip(run.model.get_weights(), result.model.get_weights()):
        np.testing.assert_array_equal(saved, trained)
    np.testing.assert_array_equal(run.model(x, training=False), result.model(x, training=False))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_large_train_split_is_scored_on_a_fixed_sample(small_run):
    from kmlp.data.pipeline import make_dataset
    from kmlp.training.setup import evaluate_loss

    result, _, lines = small_run
    n = result.data.num_examples("train")
    assert result.metrics["train_loss_examples"] == 40 < result.metrics["train_examples"] == n
    X, y = result.data.examples("train")
    chosen = result.data.sample_examples("train", 40)
    on_sample = evaluate_loss(result.model, make_dataset(X[chosen], y[chosen], 4096, shuffle=False, repeat=False))
    assert result.metrics["train_loss"] == pytest.approx(on_sample, rel=1e-6)
    assert any(line.startswith("train loss ") and f"(on a fixed sample of 40 of {n:,} examples)" in line
               for line in lines), lines


@pytest.mark.integration
def test_short_training_on_names_lowers_dev_loss_below_2_6(names_run):
    out, _ = names_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 300
    assert metrics["dev_loss"] < 2.6
    assert metrics["train_loss"] < 2.6


@pytest.mark.integration
def test_cli_train_sample_evaluate_end_to_end(names_run, capsys):
    """Trained in a fresh process (names_run), sampled in another and in this one, then evaluated."""
    out, trained = names_run
    assert "dev loss" in trained.stdout and "names sampled" in trained.stdout
    assert "train 25,6" in trained.stdout  # split sizes are printed
    assert not any(word in trained.stdout + trained.stderr for word in NOISE), trained.stderr

    sampled = run_cli("sample", out, "-n", "7", "--seed", "5")
    assert sampled.returncode == 0, sampled.stderr
    assert not any(word in sampled.stderr for word in NOISE), sampled.stderr
    capsys.readouterr()
    assert cli.main(["sample", str(out), "-n", "7", "--seed", "5"]) == 0
    assert capsys.readouterr().out == sampled.stdout  # the same names, whichever process draws them

    assert cli.main(["evaluate", str(out), "--split", "test"]) == 0
    evaluated = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert 1.5 < metrics["test_loss"] < 2.6
    assert f"{metrics['test_loss']:.4f}" in evaluated
