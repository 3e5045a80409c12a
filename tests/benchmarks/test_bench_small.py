"""benchmarks/bench_small.py end to end, in this process, on a tiny start run and a tiny list built
here, with the benchmark's own options made small (a smoke test; nothing is timed against a target)."""

import re
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_small  # noqa: E402

SMALL = ["--sizes", "20", "--steps", "5", "--preset", "fast", "--sampled", "10"]


def test_bench_small_prints_scratch_and_fine_tuned_side_by_side(tiny_run_dir, tmp_path, capsys):
    words = tmp_path / "words.txt"
    words.write_text("\n".join(f"{a}{b}{c}" for a in "aeiou" for b in "lmnr" for c in "aeo"), encoding="utf-8")
    assert bench_small.main(["--words", str(words), "--from", str(tiny_run_dir), *SMALL]) == 0
    out = capsys.readouterr().out
    header = [cell.strip() for cell in bench_small.HEADER.splitlines()[0].strip("|").split("|")]
    cells = r" \| ".join([r"(-?[\d.]+%?)"] * (len(header) - 2))
    rows = re.findall(rf"^\| words \| 20 \| {cells} \|$", out, re.M)
    assert len(rows) == 1, out  # one list: a value in every column
    figures = dict(zip(header[2:], rows[0]))
    gain = float(figures["dev, scratch"]) - float(figures["dev, fine-tuned"])
    assert abs(gain - float(figures["gain"])) < 2e-3, out
    assert all(figures[f"new, {kind}"].endswith("%") for kind in ("scratch", "fine-tuned")), out
    assert re.search(r"fine-tuning's dev loss gain: least -?[\d.]+, most -?[\d.]+ nats \(better in \d of 1\)", out)
