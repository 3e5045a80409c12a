"""kmlp.training.train and the train/evaluate/sample commands: plans, time budgets, the shared setup,
divergence, run directories, real-data training."""

import csv
import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
import pytest
from conftest import TINY_WORDS, run_cli

from kmlp.cli import main as cli
from kmlp.config import Config, preset
from kmlp.data.pipeline import NamesData
from kmlp.errors import ConfigError, RunError, TrainingDiverged
from kmlp.models.mlp import build_model
from kmlp.runs.rundir import load_run
from kmlp.training import budget
from kmlp.training.budget import RunCost, plan_minutes, repeat_flags
from kmlp.training.callbacks.schedules import CosineDecay
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


@pytest.mark.parametrize("name", ["lecture", "fast", "default", "best"])
def test_weight_count_behind_the_thread_choice_matches_the_model(name):
    config = preset(name)
    model = build_model(27, config.block_size, config.n_embd, config.n_hidden, config.n_layers,
                        norm=config.norm)
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


def test_train_writes_a_complete_run(tiny_names_file, tmp_path):
    config = Config(block_size=3, n_embd=4, n_hidden=16, batch_size=8, steps=60, decay_at=[30], lr=0.1)
    out = tmp_path / "run"
    result = train(config, data_path=tiny_names_file, out_dir=out, verbose=0, log=lambda *_: None)
    for name in ("model.keras", "config.json", "history.csv", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"train_loss", "dev_loss", "steps", "seconds", "params"} <= set(metrics)
    assert metrics["steps"] == 60 and metrics["params"] == result.model.count_params()
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert rows and {"loss", "val_loss", "lr"} <= set(rows[0])
    run = load_run(out)
    assert run.vocab == result.data.vocab and run.config == config
    x = result.data.examples("dev")[0]
    for saved, trained in zip(run.model.get_weights(), result.model.get_weights()):
        np.testing.assert_array_equal(saved, trained)
    np.testing.assert_array_equal(run.model(x, training=False), result.model(x, training=False))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_large_train_split_is_scored_on_a_fixed_sample(tiny_names_file, tmp_path, monkeypatch):
    from kmlp.data.pipeline import make_dataset
    from kmlp.training import results
    from kmlp.training.setup import evaluate_loss

    monkeypatch.setattr(results, "TRAIN_LOSS_EXAMPLES", 40)
    config = Config(block_size=3, n_embd=4, n_hidden=16, batch_size=8, steps=60, decay_at=[30], lr=0.1)
    lines = []
    result = train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", verbose=0, log=lines.append)
    n = result.data.num_examples("train")
    assert result.metrics["train_loss_examples"] == 40 < result.metrics["train_examples"] == n
    X, y = result.data.examples("train")
    chosen = result.data.sample_examples("train", 40)
    on_sample = evaluate_loss(result.model, make_dataset(X[chosen], y[chosen], 4096, shuffle=False, repeat=False))
    assert result.metrics["train_loss"] == pytest.approx(on_sample, rel=1e-6)
    assert any(line.startswith("train loss ") and f"(on a fixed sample of 40 of {n:,} examples)" in line
               for line in lines), lines


# ---------------------------------------------------------------------------------------------
# Time budgets (--minutes)

NAMES_LIKE = NamesData.from_words([f"w{i:05d}x" for i in range(20_000)])  # a pass: 4,000 steps at batch 32
# (early stopping, on by default for a list this small, off: these runs are about their planned steps)
TINY = dict(block_size=3, n_embd=4, n_hidden=16, batch_size=8, jit_compile=False, early_stopping=0)


def cost(**changes) -> RunCost:
    return RunCost(**{**dict(before=5.0, step=1e-4, evaluation=0.05, finish=2.0, compile=1.0, compiled=(250,)),
                      **changes})


@pytest.mark.parametrize("minutes, step, evaluation", [(1, 1e-4, 0.05), (0.5, 2e-5, 0.01), (3, 4e-2, 0.5),
                                                       (30, 3e-5, 0.3), (2, 1e-3, 2.0)])
def test_a_plan_fills_its_budget_with_evaluations_spread_as_usual(minutes, step, evaluation):
    config = Config(minutes=minutes, decay_at=[], schedule="cosine")
    measured = cost(step=step, evaluation=evaluation)
    plan = plan_training(plan_minutes(config, NAMES_LIKE, measured), NAMES_LIKE)
    budget = minutes * 60
    assert measured.seconds(plan) <= budget
    epoch = plan.steps_per_epoch * step + evaluation
    assert measured.seconds(plan) >= budget - 2 * epoch - 0.01 * budget  # nearly all of it
    assert plan.steps_per_call == 250 and plan.steps % 250 == 0
    passes = plan.steps / NAMES_LIKE.steps_per_epoch(config.batch_size)
    aimed = max(1, min(200, plan.steps // 250, round(passes)))  # one evaluation a pass, 200 at most
    assert aimed / 2 < plan.epochs <= aimed


def test_milestones_keep_their_share_of_the_planned_steps():
    lecture = preset("lecture").replace(minutes=1)  # 200k steps, the rate cut at 100k
    planned = plan_minutes(lecture, NAMES_LIKE, cost())
    assert planned.steps != 200_000 and planned.decay_at == [round(planned.steps / 2 / 250) * 250]
    assert plan_training(planned, NAMES_LIKE).steps_per_call == 250
    assert repeat_flags(lecture, planned) == f"--steps {planned.steps} --decay-at {planned.decay_at[0]}"
    fast = preset("fast").replace(minutes=0.25)  # 1,200 steps, cut at 700 and 1,000
    planned = plan_minutes(fast, NAMES_LIKE, cost(step=1e-3))
    assert [round(m / planned.steps, 1) for m in planned.decay_at] == [0.6, 0.8]
    assert all(m % 250 == 0 for m in planned.decay_at) and planned.minutes == 0.25


def test_a_budget_too_short_for_a_call_of_the_usual_size_runs_calls_of_10_steps():
    config = Config(minutes=0.25, decay_at=[])
    slow = cost(step=0.05, evaluation=1.0, compiled=(10,))  # a call of 250 steps: 12.5 s
    planned = plan_minutes(config, NAMES_LIKE, slow)
    assert planned.steps_per_call == 10 and planned.steps % 10 == 0 and planned.steps < 250
    assert slow.seconds(plan_training(planned, NAMES_LIKE)) <= 15
    assert repeat_flags(config, planned) == f"--steps {planned.steps} --steps-per-call 10"
    with pytest.raises(ConfigError, match=r"^--minutes 0.1 is too short for this run on this machine: .* "
                                          r"give at least --minutes 0.2$"):
        plan_minutes(config.replace(minutes=0.1), NAMES_LIKE, dataclasses.replace(slow, compiled=()))


def timed_plan(config, data, cost):
    """A plan that does not depend on how fast the machine is today (what the test is not about)."""
    return budget._scaled(config, 1000, 250)


class InterruptAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("recipe", [
    dict(n_layers=2, norm="batch", dropout=0.1, rdrop=0.5, optimizer="adamw", weight_decay=0.1, lr=1e-2,
         schedule="cosine", decay_at=[]),
    dict(optimizer="sgd", lr=0.2, steps=4000, decay_at=[2000]),
], ids=["adamw-batchnorm-rdrop-cosine", "sgd-step-decay"])
def test_a_minutes_run_is_exactly_the_run_its_recorded_steps_repeat(recipe, tiny_names_file, tmp_path,
                                                                    monkeypatch):
    measured = []
    measure = budget.measure_cost
    monkeypatch.setattr(budget, "measure_cost", lambda *a, **k: measured.append(measure(*a, **k)) or measured[-1])
    monkeypatch.setattr(budget, "plan_minutes", timed_plan)
    timed = train(Config(**TINY, minutes=5, **recipe), data_path=tiny_names_file, out_dir=tmp_path / "timed",
                  **QUIET)
    assert len(measured) == 1 and measured[0].step > 0  # the model trained while measuring
    flags = timed.metrics["budget"]["repeat_with"]
    assert flags == ("--steps 1000" + (" --decay-at 500" if recipe["decay_at"] else ""))
    args = cli.build_parser().parse_args(["train", "--config", str(tmp_path / "timed" / "config.json"),
                                          *flags.split()])
    repeated = train(cli.train_config_from_args(args), data_path=tiny_names_file, out_dir=tmp_path / "steps",
                     **QUIET)
    assert repeated.config.minutes is None and repeated.metrics["steps"] == timed.metrics["steps"] == 1000
    for a, b in zip(timed.model.variables, repeated.model.variables):  # weights, statistics, seeds
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for key in ("loss", "val_loss", "lr"):  # every epoch's figures but the time
        assert timed.history[key] == repeated.history[key], key
    assert timed.metrics["dev_loss"] == repeated.metrics["dev_loss"]
    if recipe["decay_at"]:  # the cut moved with the run: from step 2,000 of 4,000 to 500 of 1,000
        per_epoch = plan_training(timed.config, timed.data).steps_per_epoch
        rates = [(per_epoch * (e + 1), lr) for e, lr in enumerate(timed.history["lr"])]
        before, after = [lr for end, lr in rates if end <= 500], [lr for end, lr in rates if end > 500]
        assert before == pytest.approx([0.2] * len(before)) and after == pytest.approx([0.02] * len(after))
        assert before and after


def test_a_resumed_minutes_run_keeps_the_steps_it_planned(tiny_names_file, tmp_path, monkeypatch):
    config = Config(**TINY, minutes=5, decay_at=[], optimizer="adam", lr=1e-2)
    monkeypatch.setattr(budget, "plan_minutes", timed_plan)
    with pytest.raises(KeyboardInterrupt):
        train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", callbacks=[InterruptAfter(1)], **QUIET)

    def measure_again(*args, **kwargs):
        raise AssertionError("a resumed run measured the machine again")

    monkeypatch.setattr(budget, "measure_cost", measure_again)
    said = []
    result = train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", resume=True, verbose=0,
                   log=said.append)
    assert "resuming a --minutes 5 run: it keeps the 1,000 steps it planned" in said
    assert result.metrics["steps"] == 1000 and result.metrics["resumed_at_step"] == 500
    assert result.metrics["budget"] == {"minutes": 5, "planned_steps": 1000, "repeat_with": "--steps 1000"}


def test_a_budgeted_fine_tuning_takes_the_rate_of_the_passes_it_planned_and_keeps_it_on_resume(
        tiny_run_dir, tiny_names_file, tmp_path, monkeypatch):
    from kmlp.runs.start import start_from

    def eight_passes(config, data, cost):
        return budget._scaled(config, 8 * data.steps_per_epoch(config.batch_size), config.steps_per_call)

    monkeypatch.setattr(budget, "plan_minutes", eight_passes)
    monkeypatch.setattr(budget, "measure_cost", lambda *args, **kwargs: cost())
    config = start_from(tiny_run_dir, minutes=5, batch_size=8, early_stopping=0)
    with pytest.raises(KeyboardInterrupt):
        train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", callbacks=[InterruptAfter(2)], **QUIET)
    said = []
    result = train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", resume=True, verbose=0,
                   log=said.append)
    assert any(line.startswith("resuming a --minutes 5 run: it keeps the") for line in said)
    assert len(result.history["val_loss"]) + 3 == 8  # a pass an evaluation; 3 done before the cut
    assert result.config.lr == pytest.approx(config.lr_passes / 8)
    assert f"rate: --lr {config.lr_passes / 8:.3g}, that is --lr-passes 0.03 over 8 passes over the train split" in said


def test_resuming_with_another_budget_is_another_run(tiny_names_file, tmp_path, monkeypatch):
    config = Config(**TINY, minutes=5, decay_at=[], optimizer="adam", lr=1e-2)
    monkeypatch.setattr(budget, "plan_minutes", timed_plan)
    monkeypatch.setattr(budget, "measure_cost", lambda *args, **kwargs: cost())
    with pytest.raises(KeyboardInterrupt):
        train(config, data_path=tiny_names_file, out_dir=tmp_path / "run", callbacks=[InterruptAfter(0)], **QUIET)
    with pytest.raises(RunError, match=r"another run \(options minutes differ\)"):
        train(config.replace(minutes=6), data_path=tiny_names_file, out_dir=tmp_path / "run", resume=True,
              **QUIET)


def test_a_short_budget_ends_within_a_tenth_of_it_and_its_schedule_spans_the_planned_steps(
        tiny_names_file, tmp_path):
    """The whole train() call, timed. The plan rests on speeds measured just before training; on a
    machine busy with other work they change from one second to the next, so a miss is tried again,
    and if all three attempts miss while the machine is busy (load average above 1.5 per core), the
    test is skipped rather than failed."""
    given = 100_000_000  # more steps than 30 s hold on any machine: the budget decides
    config = Config(**TINY, minutes=0.5, steps=given, schedule="cosine", decay_at=[], lr=0.1)
    budget, took = config.minutes * 60, []
    for attempt in range(3):
        began = time.perf_counter()
        result = train(config, data_path=tiny_names_file, out_dir=tmp_path / f"run{attempt}", **QUIET)
        took.append(round(time.perf_counter() - began, 1))
        if abs(took[-1] - budget) <= 0.1 * budget:
            break
    else:
        load = os.getloadavg()[0]
        if load > 1.5 * os.cpu_count():
            pytest.skip(f"a busy machine (load average {load:.1f}): {took} s for a budget of {budget:g} s")
        pytest.fail(f"{took} s for a budget of {budget:g} s (load average {load:.1f}); the last plan: "
                    f"{result.metrics['budget']}")
    steps = result.metrics["steps"]
    assert steps == result.metrics["budget"]["planned_steps"] < given
    per_epoch, per_call = steps // result.metrics["epochs"], plan_training(result.config, result.data).steps_per_call
    expected = CosineDecay(0.1, steps)  # the cosine spans the planned steps, not the steps given
    for epoch, rate in enumerate(result.history["lr"]):
        assert rate == pytest.approx(expected.rate_at((epoch + 1) * per_epoch - per_call), rel=1e-5, abs=1e-7)


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
