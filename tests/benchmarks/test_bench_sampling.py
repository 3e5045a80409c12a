"""benchmarks/bench_sample.py and bench_litert.py run end to end on a tiny model (smoke tests; nothing
is timed against a target)."""

import re
import subprocess
import sys

from conftest import ROOT


def bench(script, *args):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done.stdout


def test_bench_sample_times_an_earlier_sampler_side_by_side(tiny_run_dir):
    out = bench("bench_sample.py", tiny_run_dir, "--num", 1000, "--repeats", 1, "--loop-names", 10,
                "--latency-calls", 3, "--baseline", "HEAD")
    assert re.search(r"kmlp/generation/sample.py at HEAD\s+median [\d.]+ s\s+[\d,]+ names/s", out), out
    assert re.search(r"now / HEAD: [\d.]+x names/s", out), out
    assert re.search(r"SavedModel 'generate' signature, one name per call.*p50 [\d.]+ ms", out), out


def test_bench_litert_reports_size_and_one_name_latency(tiny_run_dir):
    out = bench("bench_litert.py", tiny_run_dir, "--calls", 5)
    assert re.search(r"model.tflite: [\d,]+ bytes", out), out
    assert re.search(r"LiteRT reference loop \(kmlp.export.litert\)\s+p50 [\d.]+ ms", out), out
    assert re.search(r"LiteRT / SavedModel, p50: [\d.]+x the time", out), out


def test_bench_memory_reports_the_peak_of_each_command(tiny_run_dir):
    out = bench("bench_memory.py", tiny_run_dir, "--max-names", 10_000, "--lengths", 200_000)
    assert re.search(r"kmlp sample -n 10,000\s+\d+\s+[\d.]+", out), out
    assert re.search(r"kmlp score --file - \(10,000 names\)\s+\d+", out), out
    assert re.search(r"kmlp score: 10,000 names \+ one of 200,000 chars\s+\d+", out), out
