"""benchmarks/bench_sample.py and bench_litert.py run end to end on a tiny model (smoke tests; nothing
is timed against a target)."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT, train_tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("bench"))


def bench(script, *args):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done.stdout


def test_bench_sample_times_an_earlier_sampler_side_by_side(run):
    out = bench("bench_sample.py", run.path, "--num", 1000, "--repeats", 1, "--loop-names", 10,
                "--latency-calls", 3, "--baseline", "HEAD")
    assert re.search(r"kmlp/sample.py at HEAD\s+median [\d.]+ s\s+[\d,]+ names/s", out), out
    assert re.search(r"now / HEAD: [\d.]+x names/s", out), out
    assert re.search(r"SavedModel 'generate' signature, one name per call.*p50 [\d.]+ ms", out), out


def test_bench_litert_reports_size_and_one_name_latency(run):
    out = bench("bench_litert.py", run.path, "--calls", 5)
    assert re.search(r"model.tflite: [\d,]+ bytes", out), out
    assert re.search(r"LiteRT reference loop \(kmlp.litert\)\s+p50 [\d.]+ ms", out), out
    assert re.search(r"LiteRT / SavedModel, p50: [\d.]+x the time", out), out


def test_bench_memory_reports_the_peak_of_each_command(run):
    out = bench("bench_memory.py", run.path, "--max-names", 10_000)
    assert re.search(r"kmlp sample -n 10,000\s+\d+\s+[\d.]+", out), out
    assert re.search(r"kmlp score --file - \(10,000 names\)\s+\d+", out), out
    assert re.search(r"kmlp score: 10,000 names \+ one of 200,000 chars\s+\d+", out), out
