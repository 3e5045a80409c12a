"""How close `kmlp train --minutes` runs come to their budget: the README's table of time budgets.

    python benchmarks/bench_minutes.py                     # the README's three runs (about 5 minutes)
    python benchmarks/bench_minutes.py "--preset best --minutes 10" --data names.txt

Each command runs as a user runs it (a fresh `python -m kmlp train` process, `--samples 0`, into a
temporary folder) and gives one Markdown row: the budget, the time from the command's start to the
saved run (what the budget covers), the steps planned with the flags that repeat them, and what was
measured before training (steps/s, seconds per evaluation, seconds to start and to finish). The
load average before and after each run is printed too: budgets are planned from speeds measured
just before training, so a machine busy with other work moves the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ["--preset lecture --minutes 1", "--preset fast --minutes 1", ""]  # "": kmlp train, 3 minutes
HEADER = ["| command | budget | took | steps planned | measured before training: steps/s, per evaluation, "
          "start, finish |", "|---|---:|---:|---:|---|"]


def run(flags: str, data: str | None, out: Path) -> str:
    command = [sys.executable, "-m", "kmlp", "train", *shlex.split(flags), "--samples", "0", "--quiet",
               "--out", str(out), *(["--data", data] if data else [])]
    load, began = os.getloadavg()[0], time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode:
        sys.exit(f"kmlp train {flags} failed:\n{done.stderr}")
    took = re.search(r"\(([\d.]+) s in all, for a budget of ([\d.]+) s\)", done.stdout)
    plan = json.loads((out / "metrics.json").read_text())["budget"]
    print(f"kmlp train {flags}: {took[1]} s to the saved run, {wall:.1f} s the whole process; load average "
          f"{load:.1f} before, {os.getloadavg()[0]:.1f} after", file=sys.stderr)
    repeat = plan["repeat_with"].split(" ", 2)[2:]  # what follows "--steps N"
    return (f"| `kmlp train {flags}`".rstrip() + f" | {float(took[2]):g} s | {took[1]} s | "
            f"{plan['planned_steps']:,}" + (f" (`{repeat[0]}`)" if repeat else "") + " | "
            f"{1 / plan['seconds_per_step']:,.1f}; {plan['seconds_per_evaluation']:.2f} s; "
            f"{plan['seconds_before_training']:.1f} s; {plan['seconds_to_finish']:.1f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("commands", nargs="*", default=COMMANDS, metavar="FLAGS",
                   help="flags of kmlp train, one quoted string per run (default: the README's three)")
    p.add_argument("--data", help="names file (default: kmlp's own default)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kmlp-minutes-") as tmp:
        for i, flags in enumerate(args.commands):
            rows.append(run(flags, args.data, Path(tmp) / f"run{i}"))
    print("\n".join(HEADER + rows))


if __name__ == "__main__":
    main()
