"""How close `kmlp train --minutes` runs come to their budget: the table of docs/time-budgets.md.

    python benchmarks/bench_minutes.py                     # the README's three runs (about 5 minutes)
    python benchmarks/bench_minutes.py "--preset best --minutes 10" --data names.txt
    python benchmarks/bench_minutes.py --busy "--preset default --minutes 1"

Each command runs as a user runs it (a fresh `python -m kmlp train` process, `--samples 0`, into a
temporary folder) and gives one Markdown row: the machine, the budget, the time from the command's
start to the saved run (what the budget covers), the steps planned with the flags that repeat them,
the steps run (fewer, with the `--stop-at` that repeats them, if the run fell behind its plan and
ended early), the dev loss, and what was measured before training (steps/s, seconds per
evaluation, seconds to start and to finish). The load average before and after each run is printed
too: budgets are planned from speeds measured just before training.

With --busy, the machine gets busier half-way: two busy processes (Python loops, one per core of a
two-core machine) start half-way through each budget and stop when the run ends (or after a whole
budget's time, at the latest).
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
import threading
from pathlib import Path

COMMANDS = ["--preset lecture --minutes 1", "--preset fast --minutes 1", ""]  # "": kmlp train, 3 minutes
HEADER = ["| command | machine | budget | took | steps planned | steps run | dev loss | measured before "
          "training: steps/s, per evaluation, start, finish |", "|---|---|---:|---:|---:|---:|---:|---|"]
BUSY_PROCESSES = 2
BURN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


class Busy:
    """``count`` busy processes from ``after`` seconds on, for ``seconds`` at most:
    ``with Busy(2, 30, 60): ...``; any still running when the block ends are killed."""

    def __init__(self, count: int, after: float, seconds: float):
        self.count, self.seconds, self.processes = count, seconds, []
        self._timer = threading.Timer(after, self._start)

    def _start(self) -> None:
        code = BURN.format(seconds=self.seconds)
        self.processes = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.count)]

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        self._timer.join()
        for process in self.processes:
            process.kill()
            process.wait()


def budget_of(flags: str) -> float:
    """The seconds of ``--minutes`` in ``flags`` (kmlp train's own 3 minutes if none and no length)."""
    minutes = re.search(r"--minutes[ =](\S+)", flags)
    return 60 * float(minutes[1]) if minutes else 180.0


def run(flags: str, data: str | None, out: Path, busy: bool = False) -> dict:
    """``kmlp train FLAGS`` into ``out`` (with two busy processes from half its budget on if ``busy``):
    the seconds it took to the saved run, its budget, and its metrics.json."""
    command = [sys.executable, "-m", "kmlp", "train", *shlex.split(flags), "--samples", "0", "--quiet",
               "--out", str(out), *(["--data", data] if data else [])]
    budget = budget_of(flags)
    load = os.getloadavg()[0]
    with Busy(BUSY_PROCESSES if busy else 0, budget / 2, budget):
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"kmlp train {flags} failed:\n{done.stderr}")
    took = re.search(r"\(([\d.]+) s in all, for a budget of ([\d.]+) s\)", done.stdout)
    started = f"; {BUSY_PROCESSES} busy processes from {budget / 2:g} s" if busy else ""
    print(f"kmlp train {flags}: {took[1]} s to the saved run; load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after{started}", file=sys.stderr)
    for line in re.findall(r"^fell behind the plan: .*$", done.stdout, re.M):
        print(line, file=sys.stderr)
    return {"took": float(took[1]), "budget": float(took[2]),
            "metrics": json.loads((out / "metrics.json").read_text())}


def row(flags: str, ran: dict, busy: bool = False) -> str:
    """The table's row of a run."""
    metrics = ran["metrics"]
    plan = metrics["budget"]
    repeat = re.sub(r"--st(eps|op-at) \d+ ?", "", plan["repeat_with"]).strip()  # what else it changed
    changed = f" (`{repeat}`)" if repeat else ""
    stopped = f" (`--stop-at {plan['stopped_at']}`)" if "stopped_at" in plan else ""
    machine = f"{BUSY_PROCESSES} busy processes from half-way" if busy else "quiet"
    return (f"| `kmlp train {flags}`".rstrip() + f" | {machine} | {ran['budget']:g} s | {ran['took']} s | "
            f"{plan['planned_steps']:,}{changed} | {metrics['steps']:,}{stopped} | {metrics['dev_loss']:.4f} | "
            f"{1 / plan['seconds_per_step']:,.1f}; {plan['seconds_per_evaluation']:.2f} s; "
            f"{plan['seconds_before_training']:.1f} s; {plan['seconds_to_finish']:.1f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("commands", nargs="*", default=COMMANDS, metavar="FLAGS",
                   help="flags of kmlp train, one quoted string per run (default: the README's three)")
    p.add_argument("--data", help="names file (default: kmlp's own default)")
    p.add_argument("--busy", action="store_true",
                   help=f"start {BUSY_PROCESSES} busy processes half-way through each budget")
    args = p.parse_args()
    print("\n".join(HEADER), flush=True)  # then each row once it is measured: a failed run keeps the rows before
    with tempfile.TemporaryDirectory(prefix="kmlp-minutes-") as tmp:
        for i, flags in enumerate(args.commands):
            print(row(flags, run(flags, args.data, Path(tmp) / f"run{i}", args.busy), args.busy), flush=True)


if __name__ == "__main__":
    main()
