"""kmlp on names files far larger than names.txt: load time, memory, speed and overhead.

It makes its own files, names drawn from a character n-gram model of names.txt (--order 3: each
character given the two before it), with --sizes lines (default 32,000, 1,000,000 and 5,000,000),
and one of 10 names whose run is TensorFlow's own memory floor (each name 1,000 times over, 70 kB,
so that its training and evaluation minibatches are as large as in the other runs: a 10-line file,
--floor-repeats 1, trains on batches of its 60-odd examples and needs less memory for reasons that
have nothing to do with the data). Each file is trained on by a whole ``kmlp train`` process
(--preset, default ``default``, at its own length unless --steps), started afresh, with clocks on
its phases; the floor too, for the same steps as the others: TensorFlow's resident memory grows
over a long run by itself, and that growth is not the data's. Memory is measured at --short-steps
too (default 300), floor and files trained again that long: there, the floor's own growth over
thousands of steps cannot hide what the data takes. Peak RSS varies by about 10 MB from run to run:
--repeats N makes every run N times, in turn, and takes each figure's median. For each file:

  load s, CPU s    reading the file and building the splits and token streams, in the run (CPU
                   time too: on a busy machine it tells what the wall time would be on a quiet one)
  s/1M             load seconds per million names
  loading peak     (--load-only) peak RSS above the resident memory just before loading, in file
                   sizes: what the data structures cost at their height, TensorFlow left out
  steps/s          optimizer steps per second of training (fit, less its dev evaluations)
  non-training     the share of the process's wall time spent outside training steps: start-up,
                   loading, evaluations on dev, the final train and dev losses, saving, pictures
                   and the names sampled at the end (each given in the breakdown that follows)

and, for each length (--short-steps, then the run's own), a memory table:

  peak RSS         the process's peak resident memory (``ru_maxrss`` of the child)
  above floor      peak RSS minus the 10-name run's of the same length, in MB
  x file           that, as a multiple of the file's size: the target is at most 10x

It checks the targets on the files of a million lines or more: under 10x the file size above the
floor at each length (said met or not, with the multiples), loading under 3 s per million names,
and a non-training share under 20% for 1M names at the preset's own length.

    python benchmarks/bench_scale.py                          # the whole measurement, about an hour
    python benchmarks/bench_scale.py --sizes 1000000          # 1M names at 300 and 4,500 steps
    python benchmarks/bench_scale.py --load-only              # loading alone, in a minute or two

Files are kept in --work (default: kmlp-bench-scale/ in the temporary directory) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kmlp.data.files import load_words  # noqa: E402
from kmlp.training.backup import Backup  # noqa: E402

MEMORY_FACTOR = 10          # peak RSS above the floor, in file sizes
LOAD_SECONDS_PER_MILLION = 3.0
NON_TRAINING_SHARE = 0.20   # of the wall time of a full-length run on OVERHEAD_LINES names
OVERHEAD_LINES = 1_000_000
TARGET_LINES = 1_000_000    # the targets are checked on files this large or larger: below, fixed costs
                            # and the noise of peak RSS (a few MB) outweigh the data
FLOOR_LINES = 10
FLOOR_REPEATS = 1000  # each of the floor's names: its train and dev minibatches are full-size too
REPORT = "kmlp-bench-scale:"  # the child's last line: its clocks as JSON


# ---------------------------------------------------------------------------------------------
# Names files drawn from a character n-gram model of names.txt


def ngram_names(words: list[str], count: int, order: int = 3, seed: int = 0, max_len: int = 30,
                chunk: int = 500_000) -> list[bytes]:
    """``count`` names drawn from the character ``order``-gram model of ``words`` (counts of each
    character after the ``order - 1`` before it, the boundary included), as newline-terminated
    ASCII chunks. All names of a chunk are drawn together, one character position at a time."""
    import numpy as np

    chars = sorted(set("".join(words)))
    stoi = {c: i + 1 for i, c in enumerate(chars)}
    size, width = len(chars) + 1, order - 1
    counts = np.zeros((size ** width, size))
    for w in words:
        ids = [0] * width + [stoi[c] for c in w] + [0]
        for i in range(width, len(ids)):
            counts[_context_index(ids[i - width:i], size), ids[i]] += 1
    cdf = np.cumsum(counts, axis=1)
    cdf /= np.maximum(cdf[:, -1:], 1)
    ascii_of = np.frombuffer(b"\n" + "".join(chars).encode("ascii"), np.uint8)
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        ids = np.zeros((n, max_len + 1), np.int64)  # the last column stays a boundary: the cut
        context = np.zeros(n, np.int64)
        alive = np.ones(n, bool)
        for j in range(max_len):
            rows = np.flatnonzero(alive)
            if not rows.size:
                break
            u = rng.random(len(rows))
            nxt = (cdf[context[rows]] < u[:, None]).sum(axis=1)
            ids[rows, j] = nxt
            context[rows] = (context[rows] * size + nxt) % size ** width
            alive[rows] = nxt != 0
        ends = np.argmax(ids == 0, axis=1)  # each name's closing boundary becomes its "\n"
        keep = np.arange(max_len + 1) <= ends[:, None]
        out.append(ascii_of[ids][keep].tobytes())
    return out


def _context_index(ids, size: int) -> int:
    index = 0
    for i in ids:
        index = index * size + i
    return index


def names_file(work: Path, source: Path, lines: int, order: int, seed: int,
               repeats: int = FLOOR_REPEATS) -> Path:
    """The file of ``lines`` drawn names, or for the floor the first ``lines`` names of ``source``,
    each ``repeats`` times (made once, then reused)."""
    path = work / (f"first-{lines}x{repeats}.txt" if lines == FLOOR_LINES
                   else f"ngram{order}-{lines}-seed{seed}.txt")
    if not path.exists():
        words = load_words(source)
        chunks = ["".join(f"{w}\n" for w in words[:lines] * repeats).encode()] if lines == FLOOR_LINES \
            else ngram_names(words, lines, order, seed)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# One `kmlp train` process, with clocks on its phases


def child(argv: list[str]) -> int:
    """``kmlp train ARGV`` in this process, with clocks around its phases; prints them last."""
    clocks: dict[str, float] = {}

    import keras

    from kmlp import plots
    from kmlp.cli import main as cli
    from kmlp.data.pipeline import NamesData
    from kmlp.generation import sample
    from kmlp.training import results, train as training

    def clocked(owner, name: str, phase: str, method: bool = False):
        original = getattr(owner, name)

        def run(*args, **kwargs):
            began, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                clocks[phase] = clocks.get(phase, 0.0) + time.perf_counter() - began
                clocks[f"{phase} cpu"] = clocks.get(f"{phase} cpu", 0.0) + time.process_time() - cpu

        setattr(owner, name, classmethod(lambda cls, *a, **k: run(*a, **k)) if method else run)

    class FitClock(keras.callbacks.Callback):
        """fit's whole span, and the dev evaluations inside it."""

        def on_train_begin(self, logs=None):
            self.began, clocks["evaluations on dev during fit"] = time.perf_counter(), 0.0

        def on_test_begin(self, logs=None):
            self.test_began = time.perf_counter()

        def on_test_end(self, logs=None):
            clocks["evaluations on dev during fit"] += time.perf_counter() - self.test_began

        def on_train_end(self, logs=None):
            clocks["fit"] = time.perf_counter() - self.began
            clocks["steps"] = int(self.model.optimizer.iterations.numpy())

    clocked(NamesData, "for_config", "load", method=True)
    clocked(results, "evaluate_loss", "final train and dev losses")
    clocked(keras.Model, "save", "saving the model")
    clocked(plots, "plot_training", "pictures")
    clocked(sample, "sample_names", "sampling names")
    original_train = training.train
    training.train = lambda *a, **k: original_train(*a, **{**k, "callbacks": [FitClock()]})
    code = cli.main(["train", *argv])
    print(REPORT, json.dumps(clocks))
    return code


# A small process between this one and the measured one: a child's peak RSS counts the pages it
# shared with its parent before exec, so the measured process is started from a parent that holds
# next to nothing (not from this one, which holds the drawn names).
LAUNCHER = """import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}")
"""


def run_measured(command: list[str]) -> tuple[str, float, int]:
    """Run ``command`` in a fresh process: its stdout, wall seconds and peak RSS (bytes)."""
    with tempfile.TemporaryDirectory(prefix="kmlp-bench-scale-") as tmp:
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", LAUNCHER, f"{tmp}/usage", *command], cwd=ROOT,
                              capture_output=True, text=True)
        wall = time.perf_counter() - began
        code, peak = map(int, Path(f"{tmp}/usage").read_text().split())
    if code or done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout, wall, peak


def run_child(argv: list[str]) -> dict:
    """``kmlp train ARGV`` in a fresh process: its clocks, output, wall seconds and peak RSS."""
    out, wall, peak = run_measured([sys.executable, __file__, "--child", *argv])
    report = [line for line in out.splitlines() if line.startswith(REPORT)][-1]
    return {**json.loads(report[len(REPORT):]), "wall": wall, "peak_rss": peak, "output": out}


def load_only(path: Path) -> dict:
    """Loading alone in a fresh process: seconds, names, the process's peak RSS and its resident
    memory just before loading (Python, numpy and kmlp imported), so that the difference is what
    reading the file and building the splits cost at their height."""
    code = ("import sys, os, time, json; sys.path.insert(0, sys.argv[2]); from kmlp.config import preset;"
            "from kmlp.data.pipeline import NamesData;"
            "start = int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE');"
            "t, c = time.perf_counter(), time.process_time();"
            "d = NamesData.for_config(sys.argv[1], preset('default'));"
            "print(json.dumps({'load': time.perf_counter() - t, 'load_cpu': time.process_time() - c,"
            " 'names': sum(map(d.num_names, d.streams)), 'start_rss': start}))")
    out, _, peak = run_measured([sys.executable, "-c", code, str(path), str(ROOT)])
    return {**json.loads(out), "peak_rss": peak}


# ---------------------------------------------------------------------------------------------
# The report


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e7 else f"{n / 1e6:,.1f} MB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32_000, 1_000_000, 5_000_000],
                   help="lines of the files to make (default 32000 1000000 5000000)")
    p.add_argument("--preset", default="default", help="kmlp train --preset (default: default)")
    p.add_argument("--steps", type=int, help="kmlp train --steps (default: the preset's)")
    p.add_argument("--short-steps", type=int, default=300,
                   help="also measure memory in runs this long, when --steps is longer (default 300; 0: not)")
    p.add_argument("--repeats", type=int, default=1,
                   help="make every training run this many times and take the median (default 1)")
    p.add_argument("--floor-repeats", type=int, default=FLOOR_REPEATS,
                   help=f"times each of the floor's {FLOOR_LINES} names is in its file (default {FLOOR_REPEATS}; "
                        f"1: a plain {FLOOR_LINES}-line file, whose minibatches are smaller)")
    p.add_argument("--order", type=int, default=3, help="n of the character n-gram model (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing the names (default 0)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "names.txt",
                   help="names the n-gram model is counted from (default ../shared/data/names.txt)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "kmlp-bench-scale",
                   help="folder for the files and runs (default: kmlp-bench-scale in the temp dir)")
    p.add_argument("--load-only", action="store_true", help="time and measure loading alone, no training")
    args = p.parse_args(argv)
    if any(n < FLOOR_LINES for n in args.sizes) or (args.steps is not None and args.steps < 1) or args.order < 1 \
            or args.short_steps < 0 or min(args.repeats, args.floor_repeats) < 1:
        p.error(f"--sizes must be at least {FLOOR_LINES} lines, --steps, --order, --repeats and --floor-repeats "
                f"positive, --short-steps 0 or more")
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}; files in {args.work}")
    files = {n: names_file(args.work, args.data, n, args.order, args.seed, args.floor_repeats)
             for n in [FLOOR_LINES, *args.sizes]}
    if args.load_only:
        return measure_loading({n: path for n, path in files.items() if n != FLOOR_LINES})
    return measure_training(files, args)


def measure_loading(files: dict[int, Path]) -> int:
    print(f"{'lines':>10} {'file':>8} {'load s':>7} {'CPU s':>6} {'s/1M':>5} {'CPU s/1M':>9} {'peak RSS':>9} "
          f"{'loading peak':>13}")
    load_ok = []
    for lines, path in files.items():
        r = load_only(path)
        size, per_million = path.stat().st_size, r["load"] / r["names"] * 1e6
        if lines >= TARGET_LINES:
            load_ok.append(per_million < LOAD_SECONDS_PER_MILLION)
        print(f"{lines:>10,} {mb(size):>8} {r['load']:>7.2f} {r['load_cpu']:>6.2f} {per_million:>5.2f} "
              f"{r['load_cpu'] / r['names'] * 1e6:>9.2f} {mb(r['peak_rss']):>9} "
              f"{(r['peak_rss'] - r['start_rss']) / size:>12.1f}x")
    print("loading peak: the process's peak RSS above its resident memory just before loading, in file sizes")
    print(f"target, on files of {TARGET_LINES:,} lines or more: loading under {LOAD_SECONDS_PER_MILLION:g} s "
          f"per million names: {verdict(load_ok)}")
    return 0


def train_runs(files: dict[int, Path], args, steps: int | None) -> dict[int, dict]:
    """``kmlp train`` processes on each file, the floor first, for ``steps`` (None: the preset's),
    --repeats times in turn; each figure the median of its repeats."""
    made: dict[int, list[dict]] = {lines: [] for lines in files}
    for _ in range(args.repeats):
        for lines, path in files.items():
            out = args.work / f"run-{lines}-{steps or 'full'}"
            Backup(out).remove()  # this benchmark's own, from a run cut short (the run itself is replaced)
            argv = ["--data", str(path), "--preset", args.preset, "--out", str(out),
                    "--quiet", "--samples", "10"] + (["--steps", str(steps)] if steps else [])
            r = run_child(argv)
            made[lines].append({**r, "size": path.stat().st_size, "file": path.name})
            print(f"  {lines:,} lines, {r['steps']:,} steps: {r['wall']:.0f} s, peak {mb(r['peak_rss'])}, "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
    return {lines: median_run(repeats) for lines, repeats in made.items()}


def median_run(repeats: list[dict]) -> dict:
    """One run's figures from its repeats: each number the median of its values, the rest the first's."""
    return {key: type(value)(statistics.median(r[key] for r in repeats)) if isinstance(value, (int, float))
            else value for key, value in repeats[0].items()}


def measure_training(files: dict[int, Path], args) -> int:
    lengths = [args.steps]  # None: the preset's
    if args.short_steps and (args.steps is None or args.steps > args.short_steps):
        lengths.insert(0, args.short_steps)
    by_length = {steps: train_runs(files, args, steps) for steps in lengths}
    runs = by_length[args.steps]
    repeats = f", median of {args.repeats} runs each" if args.repeats > 1 else ""
    print(f"\nkmlp train --preset {args.preset}" + (f" --steps {args.steps:,}" if args.steps else "")
          + f" ({runs[FLOOR_LINES]['steps']:,} steps{repeats})")
    print(f"{'lines':>10} {'file':>8} {'load s':>7} {'CPU s':>6} {'s/1M':>5} {'steps/s':>8} {'wall s':>7} "
          f"{'non-training':>13}")
    for lines, r in runs.items():
        if lines != FLOOR_LINES:
            print(f"{lines:>10,} {mb(r['size']):>8} {r['load']:>7.2f} {r['load cpu']:>6.2f} "
                  f"{r['load'] / lines * 1e6:>5.2f} {r['steps'] / training_seconds(r):>8.1f} {r['wall']:>7.0f} "
                  f"{non_training_share(r):>12.1%}")
    print("\nwhere the non-training time goes (seconds):")
    phases = ["load", "evaluations on dev during fit", "final train and dev losses", "saving the model",
              "pictures", "sampling names"]
    print(f"{'lines':>10} " + " ".join(f"{p[:12]:>12}" for p in phases) + f" {'start-up etc':>12}")
    for lines, r in runs.items():
        rest = r["wall"] - training_seconds(r) - sum(r.get(p, 0.0) for p in phases)
        print(f"{lines:>10,} " + " ".join(f"{r.get(p, 0.0):>12.1f}" for p in phases) + f" {rest:>12.1f}")
    for lines, r in runs.items():
        line = next((x for x in r["output"].splitlines() if x.startswith("train loss")), "")
        print(f"  {lines:,} lines: {line}")
    for group in by_length.values():
        print_memory(group)
    met = check_targets(by_length, full_length=not args.steps)
    print(f"\ntargets, on files of {TARGET_LINES:,} lines or more:")
    for line in memory_verdicts(by_length):
        print(f"  {line}")
    print(f"  loading under {LOAD_SECONDS_PER_MILLION:g} s per million names: {verdict(met['load'])}")
    print(f"  non-training under {NON_TRAINING_SHARE:.0%} of the wall time, {OVERHEAD_LINES:,} names at the "
          f"preset's own length: {verdict(met['overhead'])}")
    return 0


def print_memory(runs: dict[int, dict]) -> None:
    """Peak RSS of runs of the same length, and each file's above the floor's."""
    floor = runs[FLOOR_LINES]
    print(f"\nmemory, {floor['steps']:,} steps each; the floor ({floor['file']}): peak RSS {mb(floor['peak_rss'])}")
    print(f"{'lines':>10} {'file':>8} {'peak RSS':>9} {'above floor':>12} {'x file':>7}")
    for lines, r in runs.items():
        if lines != FLOOR_LINES:
            print(f"{lines:>10,} {mb(r['size']):>8} {mb(r['peak_rss']):>9} "
                  f"{mb(r['peak_rss'] - floor['peak_rss']):>12} {above_floor(r, floor['peak_rss']):>6.1f}x")


def training_seconds(r: dict) -> float:
    """Seconds of optimizer steps: fit, less its evaluations on dev."""
    return r["fit"] - r["evaluations on dev during fit"]


def non_training_share(r: dict) -> float:
    return 1 - training_seconds(r) / r["wall"]


def above_floor(r: dict, floor: int) -> float:
    """Peak RSS above the floor run's, in file sizes."""
    return (r["peak_rss"] - floor) / r["size"]


def check_targets(by_length: dict[int | None, dict[int, dict]], full_length: bool) -> dict:
    """For each target, whether each run it applies to meets it (an empty list: not measured); the
    memory target for each length apart (``{steps: [...]}``). ``by_length`` maps each length measured
    (the run's own last) to its runs: lines -> a run's figures, the floor's (FLOOR_LINES) included."""
    runs = list(by_length.values())[-1]
    large = {lines: r for lines, r in runs.items() if lines >= TARGET_LINES}
    return {"memory": {steps: [x < MEMORY_FACTOR for x in multiples.values()]
                       for steps, multiples in memory_multiples(by_length).items()},
            "load": [r["load"] / lines * 1e6 < LOAD_SECONDS_PER_MILLION for lines, r in large.items()],
            "overhead": [non_training_share(runs[OVERHEAD_LINES]) < NON_TRAINING_SHARE]
            if full_length and OVERHEAD_LINES in runs else []}


def memory_multiples(by_length: dict[int | None, dict[int, dict]]) -> dict[int, dict[int, float]]:
    """For each length (in steps), each file of TARGET_LINES or more: its peak RSS above the floor's
    of the same length, in file sizes."""
    return {group[FLOOR_LINES]["steps"]: {lines: above_floor(r, group[FLOOR_LINES]["peak_rss"])
                                          for lines, r in group.items() if lines >= TARGET_LINES}
            for group in by_length.values()}


def memory_verdicts(by_length: dict[int | None, dict[int, dict]]) -> list[str]:
    """The memory target at each length, said met or not, with each large file's multiple."""
    met = check_targets(by_length, full_length=False)["memory"]
    return [f"target <{MEMORY_FACTOR}x the file above the floor at {steps:,} steps: {verdict(met[steps])}"
            + (" (" + "; ".join(f"{lines:,} lines {x:.1f}x" for lines, x in multiples.items()) + ")"
               if multiples else "")
            for steps, multiples in memory_multiples(by_length).items()]


def verdict(checks: list[bool]) -> str:
    return "not measured" if not checks else "met" if all(checks) else "NOT met"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        from kmlp.utils.quiet import silence_tensorflow

        silence_tensorflow()
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
