"""benchmarks/bench_scale.py: its names files, its target checks, and a tiny end-to-end run whose
printed report is read back (nothing is timed: the figures are checked for form and sense only)."""

import re
import subprocess
import sys

from conftest import ROOT, TINY_WORDS

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_scale import (FLOOR_LINES, check_targets, median_run, memory_verdicts, names_file,  # noqa: E402
                         ngram_names)

BENCH = ROOT / "benchmarks" / "bench_scale.py"
MB = r"-?[\d,.]+ MB"


def run_bench(*args) -> str:
    done = subprocess.run([sys.executable, str(BENCH), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_drawn_names_follow_the_source_and_end_lines():
    chunks = ngram_names(TINY_WORDS, 5000, order=3, seed=1, chunk=2000)
    text = b"".join(chunks).decode("ascii")
    lines = text.split("\n")
    assert len(chunks) == 3 and text.endswith("\n") and len(lines) - 1 == 5000
    assert set("".join(lines)) <= set("".join(TINY_WORDS))
    assert len(set(lines)) > 100 and "emma" in lines  # new names, and some of the source's
    assert chunks == ngram_names(TINY_WORDS, 5000, order=3, seed=1, chunk=2000)  # seeded


def test_the_floor_is_the_first_names_repeated(tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("\n".join(TINY_WORDS) + "\n")
    for repeats in (1000, 1):
        path = names_file(tmp_path, source, FLOOR_LINES, order=3, seed=0, repeats=repeats)
        assert path.name == f"first-10x{repeats}.txt"
        assert path.read_text().splitlines() == TINY_WORDS[:FLOOR_LINES] * repeats


def figures(peak_mb: float, size_mb: float = 0, load: float = 1.0, fit: float = 100.0, wall: float = 110.0,
            steps: int = 4500):
    return {"peak_rss": peak_mb * 1e6, "size": size_mb * 1e6, "load": load, "fit": fit,
            "evaluations on dev during fit": 5.0, "wall": wall, "steps": steps}


def test_targets_are_checked_on_large_files_only_and_overhead_at_full_length():
    runs = {FLOOR_LINES: figures(1000), 32_000: figures(1100, size_mb=0.2),  # 500x, but small: not checked
            1_000_000: figures(1065, size_mb=7, load=2.0), 5_000_000: figures(1400, size_mb=36, load=14.0)}
    met = check_targets({None: runs}, full_length=True)
    assert met == {"memory": {4500: [True, False]}, "load": [True, True], "overhead": [True]}  # 400 MB > 10 x 36
    assert check_targets({None: runs}, full_length=False)["overhead"] == []
    runs[1_000_000].update(wall=200.0, load=3.5)  # 105 s of 200 outside training steps; 3.5 s per 1M
    assert check_targets({None: runs}, full_length=True)["overhead"] == [False]
    assert check_targets({None: runs}, full_length=True)["load"] == [False, True]
    assert check_targets({None: {FLOOR_LINES: figures(1000), 32_000: figures(1100, 0.2)}}, True) == \
        {"memory": {4500: []}, "load": [], "overhead": []}


def test_memory_is_checked_at_each_length_against_that_lengths_floor():
    short = {FLOOR_LINES: figures(900, steps=300),  # 14x; loading and overhead would fail too
             1_000_000: figures(1000, size_mb=7, load=5.0, wall=1000.0, steps=300)}
    full = {FLOOR_LINES: figures(1000), 1_000_000: figures(1060, size_mb=7, load=0.5)}  # 8.6x
    met = check_targets({300: short, None: full}, full_length=True)
    assert met == {"memory": {300: [False], 4500: [True]}, "load": [True], "overhead": [True]}  # the full runs'
    assert memory_verdicts({300: short, None: full}) == [
        "target <10x the file above the floor at 300 steps: NOT met (1,000,000 lines 14.3x)",
        "target <10x the file above the floor at 4,500 steps: met (1,000,000 lines 8.6x)"]
    full[5_000_000] = figures(1300, size_mb=36)  # 8.3x
    assert memory_verdicts({None: full})[0].endswith(": met (1,000,000 lines 8.6x; 5,000,000 lines 8.3x)")
    del full[1_000_000], full[5_000_000]
    assert memory_verdicts({None: full}) == ["target <10x the file above the floor at 4,500 steps: not measured"]


def test_a_repeated_run_gives_the_median_of_each_figure():
    repeats = [{**figures(1000, wall=100.0), "output": "a"}, {**figures(1010, wall=90.0), "output": "b"},
               {**figures(1200, wall=95.0), "output": "c"}]
    run = median_run(repeats)
    assert run["peak_rss"] == 1010e6 and run["wall"] == 95.0 and run["steps"] == 4500
    assert run["output"] == "a"  # not a number: the first run's


def test_load_and_train_runs_print_every_figure_and_the_targets(tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("\n".join(TINY_WORDS) + "\n")
    work = tmp_path / "work"
    out = run_bench("--load-only", "--sizes", 3000, "--data", source, "--work", work)
    row = re.search(rf"^\s+3,000\s+({MB})\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+({MB})\s+(-?[\d.]+)x$", out,
                    re.M)
    assert row, out
    assert row[1] == f"{(work / 'ngram3-3000-seed0.txt').stat().st_size / 1e6:.1f} MB"
    load, per_million = float(row[2]), float(row[4])
    assert load >= 0 and abs(per_million - load / 3000 * 1e6) <= 0.01 / 3000 * 1e6  # names, not lines: all 3,000
    assert "loading under 3 s per million names: not measured" in out  # checked from 1M lines on

    out = run_bench("--sizes", 3000, "--steps", 3, "--short-steps", 2, "--preset", "fast", "--data", source,
                    "--work", work)
    print(out)
    assert "kmlp train --preset fast --steps 3 (3 steps)" in out
    for steps in (2, 3):
        table = re.search(rf"^memory, {steps} steps each; the floor \(first-10x1000.txt\): peak RSS ({MB})\n.*\n"
                          rf"\s+3,000\s+({MB})\s+({MB})\s+({MB})\s+(-?[\d.]+)x$", out, re.M)
        assert table, out
        floor, _, peak, above = (float(table[i].replace(",", "")[:-3]) for i in range(1, 5))
        size = (work / "ngram3-3000-seed0.txt").stat().st_size / 1e6
        assert abs(peak - floor - above) <= 1 and abs(above / size - float(table[5])) <= 0.1 + 0.05 / size
    row = re.search(rf"^\s+3,000\s+{MB}\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+(\d+)\s+([\d.]+)%$", out, re.M)
    assert row, out
    assert float(row[1]) >= 0 and float(row[2]) > 0 and 0 < float(row[4]) < 100  # load s, steps/s, share
    breakdown = out[out.index("where the non-training time goes"):]
    assert re.search(r"^\s+10(\s+-?[\d.]+){7}$", breakdown, re.M)  # six phases and the rest, per run
    assert re.search(r"^\s+3,000(\s+-?[\d.]+){7}$", breakdown, re.M)
    assert re.search(r"3,000 lines: train loss [\d.]+  dev loss [\d.]+  \(3 steps", out)
    for target in ("target <10x the file above the floor at 2 steps", "target <10x the file above the floor at 3 steps",
                   "loading under 3 s per million names",
                   "non-training under 20% of the wall time, 1,000,000 names at the preset's own length"):
        assert f"{target}: not measured" in out
