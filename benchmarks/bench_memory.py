"""Memory of kmlp sample and kmlp score as the request grows: the peak resident memory of each command,
run as a user runs it (``python -m kmlp``, output thrown away).

    kmlp train --preset lecture --out /tmp/lecture --samples 0
    python benchmarks/bench_memory.py /tmp/lecture              # -n 10,000 to 1,000,000, and score

Names stream out in chunks and scoring runs in bounded slices, so the peak should stay flat while
-n or the number of names scored grows by orders of magnitude. A line longer than a name can be is
refused by ``kmlp score --file`` as by ``kmlp train`` (exit 2): the last rows show that finding it
holds no more than the line's piece in memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_of(args: list[str], stdin_path: Path | None = None, status: int = 0) -> tuple[float, float]:
    """(peak resident memory in MiB, seconds) of ``python -m kmlp ARGS``, which must end with ``status``."""
    started = time.perf_counter()
    with open(stdin_path or os.devnull, "rb") as stdin, open(os.devnull, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kmlp", *args], cwd=ROOT, stdin=stdin, stdout=out,
                                stderr=subprocess.PIPE)
        _, ended, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(ended) != status:
        raise SystemExit(f"kmlp {' '.join(args)} failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="run directory written by kmlp train")
    p.add_argument("--max-names", type=int, default=1_000_000,
                   help="largest -n and scored list (default 1,000,000; 10,000,000 takes minutes)")
    p.add_argument("--lengths", type=int, nargs="+", default=[2_000, 200_000], metavar="CHARS",
                   help="lengths of the one long name scored after 10,000 short ones (default 2000 200000)")
    args = p.parse_args()
    if args.max_names < 10_000:
        p.error(f"--max-names must be at least 10000, got {args.max_names}")
    if min(args.lengths) < 1:
        p.error(f"--lengths must be positive, got {min(args.lengths)}")
    sizes = [n for n in (10_000, 100_000, 1_000_000, 10_000_000) if n <= args.max_names]
    print(f"{'command':<46} {'peak MiB':>9} {'seconds':>8}")
    for n in sizes:
        peak, seconds = peak_of(["sample", args.run_dir, "-n", str(n), "--seed", "1"])
        print(f"{f'kmlp sample -n {n:,}':<46} {peak:9.0f} {seconds:8.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            names = Path(tmp) / f"names_{n}.txt"
            names.write_text("emma\nolivia\nava\nisabella\nsophia\n" * (n // 5), encoding="utf-8")
            peak, seconds = peak_of(["score", args.run_dir, "--file", "-"], stdin_path=names)
            print(f"{f'kmlp score --file - ({n:,} names)':<46} {peak:9.0f} {seconds:8.1f}")
        for length in args.lengths:
            names = Path(tmp) / f"long_{length}.txt"
            names.write_text("emma\n" * 10_000 + "a" * length + "\n", encoding="utf-8")
            peak, seconds = peak_of(["score", args.run_dir, "--file", str(names)], status=2)  # as train refuses it
            print(f"{f'kmlp score: 10,000 names + one of {length:,} chars':<46} {peak:9.0f} {seconds:8.1f}")


if __name__ == "__main__":
    main()
