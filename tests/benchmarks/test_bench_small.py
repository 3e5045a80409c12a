"""benchmarks/bench_small.py end to end on a tiny start run and a tiny list built here (a smoke test;
nothing is timed against a target)."""

import re

from test_bench_sampling import bench


def test_bench_small_prints_scratch_and_fine_tuned_side_by_side(tiny_run_dir, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("\n".join(f"{a}{b}{c}" for a in "aeiou" for b in "lmnr" for c in "aeo"), encoding="utf-8")
    out = bench("bench_small.py", "--words", words, "--sizes", "20", "--steps", "20", "--from", tiny_run_dir)
    rows = re.findall(r"^\| words \| (\d+) \| ([\d.]+) \| ([\d.]+) \| (-?[\d.]+) \|.*\| (\d+)% \| (\d+)% \|", out, re.M)
    assert [row[0] for row in rows] == ["20"], out
    for _, scratch, tuned, gain, *_ in rows:
        assert abs(float(scratch) - float(tuned) - float(gain)) < 2e-3
    assert re.search(r"fine-tuning's dev loss gain: least -?[\d.]+, most -?[\d.]+ nats \(better in \d of 1\)", out)
