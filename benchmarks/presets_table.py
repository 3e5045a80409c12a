"""The README's results table: train every preset through the CLI, evaluate the test split once at
the end, and print one Markdown row per preset from the runs' metrics.json.

    python benchmarks/presets_table.py                          # lecture, fast, default, best (~20 min)
    python benchmarks/presets_table.py --presets fast default --out-root /tmp/presets

Each row's command is exactly what was run (plus ``kmlp evaluate DIR --split test``); the
reference rows are the lecture's published dev losses.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REFERENCE_ROWS = [
    "| *reference:* the lecture's notebook (makemore part 2) | 11,897 | | 2.17 | | | |",
    "| *reference:* better init + batchnorm (part 3) | | | 2.105 | | | |",
    "| *reference:* context 8, flat MLP (part 5) | | | 2.027 | | | |",
    "| *reference:* WaveNet-style model (part 5), the series' best | | | 1.993 | | | |",
]
HEADER = ["| run | params | train | dev | test | training time | command |",
          "|---|---:|---:|---:|---:|---:|---|"]


def kmlp(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "kmlp", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"kmlp {' '.join(args)} failed:\n{done.stderr}")
    return done


def run_preset(name: str, out_root: Path, data: str | None) -> str:
    out = out_root / name
    command = ["train", "--preset", name, "--out", str(out), "--quiet", "--samples", "0"]
    if data:
        command += ["--data", data]
    kmlp(*command)
    kmlp("evaluate", str(out), "--split", "test")
    m = json.loads((out / "metrics.json").read_text())
    shown = f"kmlp train --preset {name}"
    minutes, seconds = divmod(round(m["seconds"]), 60)
    time_text = f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
    return (f"| `{name}` preset | {m['params']:,} | {m['train_loss']:.4f} | **{m['dev_loss']:.4f}** | "
            f"{m['test_loss']:.4f} | {time_text} | `{shown}` |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["lecture", "fast", "default", "best"],
                   help="presets to train, in order (default: lecture fast default best)")
    p.add_argument("--out-root", default="saved_models", help="runs go to OUT_ROOT/<preset> (default saved_models)")
    p.add_argument("--data", help="names file (default: kmlp's own default)")
    args = p.parse_args()
    rows = []
    for name in args.presets:
        rows.append(run_preset(name, Path(args.out_root), args.data))
        print(rows[-1], file=sys.stderr, flush=True)  # progress, one preset at a time
    print("\n".join(HEADER + rows + REFERENCE_ROWS))


if __name__ == "__main__":
    main()
