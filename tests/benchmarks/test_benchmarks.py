"""benchmarks/bench_train.py runs end to end with tiny step counts (a smoke test; nothing is timed)."""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

BENCH = ROOT / "benchmarks" / "bench_train.py"
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def run_bench(*args, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(BENCH), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def benchmark_module(name: str):
    """``benchmarks/NAME.py``, imported (its main() is not run)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def bench_best_output(capsys, *args) -> str:
    """What ``benchmarks/bench_best.py ARGS`` prints, run in this process (TensorFlow is loaded)."""
    capsys.readouterr()
    assert benchmark_module("bench_best").main([str(a) for a in args]) in (0, None)
    out = capsys.readouterr().out
    print(out)
    return out


def without_torch(tmp_path) -> dict:
    """An environment in which ``import torch`` fails, as where only ``.[test]`` is installed."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch hidden for this test')\n")
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def too_short(stderr: str) -> str | None:
    """kmlp's error line when a --minutes budget is too short on this machine (a busy one)."""
    return next((line for line in stderr.splitlines() if "is too short for this run on this machine" in line), None)


@pytest.mark.integration
def test_throughput_mode_reports_kmlp_and_skips_pytorch_cleanly_without_torch(names_path, tmp_path):
    done = run_bench("--steps", 4000, "--repeats", 1, "--data", names_path,
                     env_extra=without_torch(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    kmlp = re.search(r"^kmlp\s+([\d,]+)\s+([\d.]+) s\s+([\d.]+)$", out, re.M)
    assert kmlp, out
    assert float(kmlp[1].replace(",", "")) > 0 and 0 < float(kmlp[3]) < 3.3  # below a uniform guess
    assert "torch is not installed: PyTorch part skipped" in out
    assert "PyTorch run" not in out


@pytest.mark.integration
@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed: the test above ran the kmlp side")
def test_throughput_mode_reports_both_loops_and_their_ratio(names_path):
    done = run_bench("--steps", 4000, "--repeats", 1, "--data", names_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    print(out)
    assert re.search(r"^kmlp\s+[\d,]+\s+[\d.]+ s\s+[\d.]+$", out, re.M), out
    assert re.search(r"^PyTorch\s+[\d,]+\s+[\d.]+ s\s+[\d.]+$", out, re.M), out
    assert re.search(r"kmlp / PyTorch: [\d.]+x steps/s", out), out
    assert "torch.set_num_threads(1)" in out


@pytest.mark.integration
def test_time_to_quality_mode_times_a_whole_fast_run(names_path, tmp_path):
    done = run_bench("--time-to-quality", "--runs", 1, "--steps", 2000, "--eval-every", 1000,
                     "--data", names_path, "--target", 2.5)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    assert re.search(r"kmlp --preset fast: [\d.]+ s \(median\), dev loss [\d.]+; target reached", done.stdout)
    if HAVE_TORCH:
        assert re.search(r"PyTorch lecture loop \(2,000 steps, 1 thread\(s\)\): dev loss (<=|never)",
                         done.stdout)


def test_bad_flag_values_are_refused(tmp_path):
    done = run_bench("--steps", 0)
    assert done.returncode == 2 and "--steps must be a positive integer" in done.stderr


@pytest.mark.integration
def test_presets_table_trains_evaluates_and_prints_rows(names_path, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "presets_table.py"), "--presets", "fast",
                           "--budgets", "--out-root", str(tmp_path), "--data", str(names_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = done.stdout.splitlines()
    assert rows[0].startswith("| run | params | steps | train | dev | test |")
    fast = next(r for r in rows if r.startswith("| `fast` preset |"))
    assert fast in done.stderr  # each row goes to stderr as its run ends
    steps, train, dev, test = (float(v.strip(" *").replace(",", "")) for v in fast.split("|")[3:7])
    assert steps == 1200 and 2.0 < train < dev < 2.17 and 2.0 < test < 2.2
    assert "`kmlp train --preset fast`" in fast and any("1.993" in r for r in rows)


def test_a_budget_row_gives_the_steps_the_run_planned_and_its_command(tmp_path, monkeypatch):
    """A --minutes run's row, from the metrics.json kmlp writes (here written in its place)."""
    presets_table = benchmark_module("presets_table")
    commands = []

    def kmlp(*args):
        commands.append(args)
        if args[0] == "train":
            out = tmp_path / "best-0.25min"
            out.mkdir()
            (out / "metrics.json").write_text(json.dumps({
                "params": 76_579, "steps": 1_234, "train_loss": 2.1, "dev_loss": 2.2, "test_loss": 2.21,
                "seconds": 75.4, "budget": {"minutes": 0.25, "planned_steps": 1_234}}))

    monkeypatch.setattr(presets_table, "kmlp", kmlp)
    row = presets_table.run_preset("best", tmp_path, "names.txt", minutes=0.25)
    assert commands == [("train", "--preset", "best", "--minutes", "0.25", "--out", str(tmp_path / "best-0.25min"),
                         "--quiet", "--samples", "0", "--data", "names.txt"),
                        ("evaluate", str(tmp_path / "best-0.25min"), "--split", "test")]
    assert row == ("| `best` preset, a 0.25-minute budget on this machine | 76,579 | 1,234 | 2.1000 | **2.2000** | "
                   "2.2100 | 1 min 15 s | `kmlp train --preset best --minutes 0.25` |")


@pytest.mark.integration
def test_bench_best_prints_both_recipes_side_by_side_and_a_verdict(names_path, capsys):
    out = bench_best_output(capsys, "--steps", "100", "--target", "2.8", "--rounds", "1", "--chunk", "5",
                            "--n-hidden", "32", "--data", names_path)
    assert "before: float32, XLA: 100 steps at batch 1024, float32, XLA, rdrop 1" in out
    assert "now: --preset best (mixed_bfloat16): 100 steps at batch 1024, mixed_bfloat16, no XLA" in out
    assert len(re.findall(r"dev loss <= 2.8 first at step 100: \d+ s, \d+ CPU-seconds", out)) == 2
    assert re.search(r"median: [\d.]+ \| [\d.]+ steps/s, [\d.]+ \| [\d.]+ steps per CPU-second", out)
    assert re.search(r"a step of the new recipe costs [\d.]+ of the old one's in wall time, [\d.]+ in CPU", out)
    assert re.search(r"full runs: [\d.]+ in wall time .* [\d.]+ in CPU time\n  steps each needed", out)
    assert re.search(r"verdict: (at most|more than) half the time to dev loss <= 2.8 \([\d.]+ in wall time", out)


def test_both_loops_train_on_kmlps_split_whatever_the_seed(tiny_names_file):
    bench_train = benchmark_module("bench_train")
    from kmlp.config import preset
    from kmlp.data.pipeline import NamesData

    kmlp_split = NamesData.for_config(tiny_names_file, preset("lecture").replace(seed=7)).words
    assert bench_train.lecture_data(tiny_names_file, seed=7).words == kmlp_split
    assert bench_train.lecture_data(tiny_names_file, seed=42).words == kmlp_split


@pytest.mark.integration
def test_minutes_bench_prints_a_row_per_budget_with_busy_processes_from_half_way(tiny_names_file):
    flags = "--block-size 3 --n-embd 4 --n-hidden 16 --batch-size 8 --no-jit --decay-at none --minutes 0.3"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_minutes.py"), "--busy", flags, "--data",
                           str(tiny_names_file)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if too_short(done.stderr):
        pytest.skip(f"the machine is too busy for an 18-second run: {too_short(done.stderr)}")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = done.stdout.splitlines()
    assert rows[0].startswith("| command | machine | budget | took | steps planned | steps run |") and len(rows) == 3
    assert re.match(rf"\| `kmlp train {flags}` \| 2 busy processes from half-way \| 18 s \| [\d.]+ s \| [\d,]+"
                    rf"( \(`[^`]+`\))? \| [\d,]+( \(`--stop-at \d+`\))? \| [\d.]+ \| [\d,.]+; [\d.]+ s; [\d.]+ s; "
                    rf"[\d.]+ s \|$", rows[2]), rows[2]  # (stopped if it fell behind)
    assert "load average" in done.stderr and "2 busy processes from 9 s" in done.stderr


@pytest.mark.integration
def test_bench_best_skip_full_times_only_the_two_recipes_steps(names_path, capsys):
    """The README's check for another CPU: the step costs alone, no full runs."""
    out = bench_best_output(capsys, "--skip-full", "--rounds", "1", "--chunk", "5", "--n-hidden", "32",
                            "--data", names_path)
    assert "first at step" not in out and "verdict" not in out  # no full runs
    assert "step cost side by side: 1 rounds of 5 steps of each, alternated" in out
    assert re.search(r"a step of the new recipe costs [\d.]+ of the old one's in wall time, [\d.]+ in CPU", out)


@pytest.mark.integration
def test_bench_step_cost_times_candidates_against_best_and_converts_the_budget(names_path, capsys):
    """A candidate given as kmlp train flags on top of --preset best; best itself costs 1.00."""
    capsys.readouterr()
    args = ["--n-hidden 32", "--rounds", "1", "--chunk", "2", "--budget-steps", "1000", "--data", str(names_path)]
    assert benchmark_module("bench_step_cost").main(args) == 0
    out = capsys.readouterr().out
    assert "1 rounds of 2 steps of each, alternated" in out
    assert re.search(r"^\| best \| [\d.]+ \| [\d.]+ \| 1\.00, 1\.00 \| 1,000 \|$", out, re.M), out
    row = re.search(r"^\| --n-hidden 32 \| [\d.]+ \| [\d.]+ \| ([\d.]+), [\d.]+ \| ([\d,]+) \|$", out, re.M)
    assert row, out
    steps, ratio = int(row[2].replace(",", "")), float(row[1])
    assert abs(steps * ratio - 1000) <= steps * 0.005 + 1  # (the ratio is shown to 0.01)


def test_bench_step_cost_reads_candidates_as_kmlp_train_flags_on_best():
    config = benchmark_module("bench_step_cost").candidate_config("--batch-size 2048 --lr 8e-3")
    assert (config.batch_size, config.lr, config.n_hidden, config.rdrop) == (2048, 8e-3, 512, 1.0)
