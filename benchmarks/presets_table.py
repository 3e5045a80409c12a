"""The README's results table: train every preset through the CLI, evaluate the test split once at
the end, and print one Markdown row per preset from the runs' metrics.json.

    python benchmarks/presets_table.py              # lecture, fast, default, best, best in 10 minutes
    python benchmarks/presets_table.py --presets fast default --budgets --out-root /tmp/presets
    python benchmarks/presets_table.py --presets part3 part5 --budgets   # the lecture's parts 3 and 5

Each row's command is exactly what was run (plus ``kmlp evaluate DIR --split test``): a preset
trained for its own steps, or for a time budget (``--budgets best:10`` runs ``kmlp train --preset
best --minutes 10``; its row gives the steps it planned on this machine). The reference rows are
the lecture's published dev losses.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REFERENCE_ROWS = [
    "| *reference:* the lecture's notebook (makemore part 2) | 11,897 | 200,000 | | 2.17 | | | |",
    "| *reference:* better init + batchnorm (part 3) | | | | 2.105 | | | |",
    "| *reference:* context 8, flat MLP (part 5) | | | | 2.027 | | | |",
    "| *reference:* WaveNet-style model (part 5), the series' best | | | | 1.993 | | | |",
]
HEADER = ["| run | params | steps | train | dev | test | training time | command |",
          "|---|---:|---:|---:|---:|---:|---:|---|"]


def kmlp(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "kmlp", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"kmlp {' '.join(args)} failed:\n{done.stderr}")
    return done


def run_preset(name: str, out_root: Path, data: str | None, minutes: float | None = None) -> str:
    """Train ``name`` (for ``minutes`` if given), evaluate its test split, and return its row."""
    flags = ["--preset", name] + ([] if minutes is None else ["--minutes", f"{minutes:g}"])
    out = out_root / (name if minutes is None else f"{name}-{minutes:g}min")
    kmlp("train", *flags, "--out", str(out), "--quiet", "--samples", "0", *(["--data", data] if data else []))
    kmlp("evaluate", str(out), "--split", "test")
    m = json.loads((out / "metrics.json").read_text())
    label = f"`{name}` preset" + ("" if minutes is None else f", a {minutes:g}-minute budget on this machine")
    minutes_taken, seconds = divmod(round(m["seconds"]), 60)
    time_text = f"{minutes_taken} min {seconds:02d} s" if minutes_taken else f"{seconds} s"
    return (f"| {label} | {m['params']:,} | {m['steps']:,} | {m['train_loss']:.4f} | **{m['dev_loss']:.4f}** | "
            f"{m['test_loss']:.4f} | {time_text} | `kmlp train {' '.join(flags)}` |")


def budget(text: str) -> tuple[str, float]:
    """``PRESET:MINUTES`` as (preset, minutes)."""
    name, _, minutes = text.partition(":")
    try:
        return name, float(minutes)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PRESET:MINUTES, e.g. best:10, got {text!r}") from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["lecture", "fast", "default", "best"],
                   help="presets to train, in order (default: lecture fast default best)")
    p.add_argument("--out-root", default="saved_models", help="runs go to OUT_ROOT/<preset> (default saved_models)")
    p.add_argument("--budgets", nargs="*", type=budget, default=[("best", 10.0)], metavar="PRESET:MINUTES",
                   help="presets also trained for a time budget, after the presets (default: best:10; "
                        "none if given without values)")
    p.add_argument("--data", help="names file (default: kmlp's own default)")
    args = p.parse_args()
    rows = []
    for name, minutes in [(name, None) for name in args.presets] + args.budgets:
        rows.append(run_preset(name, Path(args.out_root), args.data, minutes))
        print(rows[-1], file=sys.stderr, flush=True)  # progress, one run at a time
    print("\n".join(HEADER + rows + REFERENCE_ROWS))


if __name__ == "__main__":
    main()
