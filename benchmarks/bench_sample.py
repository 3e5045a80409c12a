"""Sampling speed: kmlp's batched in-graph sampler against the lecture's one-name-at-a-time loop,
and the latency of one ``generate`` call on the exported SavedModel.

    kmlp train --preset lecture --steps 2000 --out /tmp/lecture --quiet
    python benchmarks/bench_sample.py /tmp/lecture                 # 100,000 names, 5 repeats
    python benchmarks/bench_sample.py /tmp/lecture --baseline HEAD~1    # against an earlier sampler

``--baseline REV`` loads ``kmlp/generation/sample.py`` as it was at git revision REV and times it
side by side with today's, repeat by repeat in turn, so that both see the same load on the machine.

Without a run directory it builds the lecture-size model with random weights (pure speed; random
weights end names later than trained ones, so the figure is not comparable). The lecture's loop is
a faithful numpy port of its sampling cell: for each name, start from ``block_size`` boundary tokens
and run the forward pass on one context at a time (embedding lookup, tanh layer, softmax) drawing
one character per pass, until the boundary comes out. It is timed on fewer names (``--loop-names``)
since it is slow; names/s is what is compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kmlp.utils.quiet import silence_tensorflow  # noqa: E402

silence_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kmlp.data.vocab import Vocabulary  # noqa: E402
from kmlp.generation.sample import NameModel  # noqa: E402
from kmlp.models.mlp import build_model  # noqa: E402
from kmlp.runs.rundir import load_run  # noqa: E402


def lecture_loop(weights, block_size: int, num: int, seed: int) -> list[list[int]]:
    """The lecture's sampling loop, ported to numpy: one name, one character, one forward pass at a time."""
    C, W1, b1, W2, b2 = weights
    rng = np.random.default_rng(seed)
    names = []
    for _ in range(num):
        out = []
        context = [0] * block_size
        while True:
            emb = C[np.array([context])]                    # (1, block_size, n_embd)
            h = np.tanh(emb.reshape(1, -1) @ W1 + b1)
            logits = h @ W2 + b2
            probs = np.exp(logits - logits.max())
            probs = (probs / probs.sum()).astype(np.float64)[0]
            ix = int(rng.choice(len(probs), p=probs / probs.sum()))  # torch.multinomial
            context = context[1:] + [ix]
            out.append(ix)
            if ix == 0:
                break
        names.append(out)
    return names


SAMPLER = "kmlp/generation/sample.py"


def sampler_at(revision: str, directory: Path):
    """The sampler (:data:`SAMPLER`) as it was at git ``revision``, imported as a module of its package;
    a revision from before the package was laid out by stage has its sampler elsewhere and is refused."""
    root = Path(__file__).resolve().parent.parent
    shown = subprocess.run(["git", "-C", str(root), "show", f"{revision}:{SAMPLER}"], capture_output=True,
                           text=True)
    if shown.returncode:
        raise SystemExit(f"--baseline {revision}: no {SAMPLER} there ({shown.stderr.strip()})")
    path = directory / "sample_at_revision.py"
    path.write_text(shown.stdout, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("kmlp.generation._sample_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_with_baseline(model, vocab, revision: str, num: int, repeats: int) -> None:
    """Names/s of the sampler at ``revision`` and of today's, timed in turn, repeat by repeat."""
    with tempfile.TemporaryDirectory() as tmp:
        before = sampler_at(revision, Path(tmp)).NameModel(model, vocab)
        after = NameModel(model, vocab)
        before.sample(num, seed=0), after.sample(num, seed=0)  # trace and warm up both
        times = {"before": [], "after": []}
        for i in range(repeats):
            for label, lm in (("before", before), ("after", after)):
                started = time.perf_counter()
                lm.sample(num, seed=i + 1)
                times[label].append(time.perf_counter() - started)
    rates = {label: num / statistics.median(t) for label, t in times.items()}
    best = {label: num / min(t) for label, t in times.items()}
    print(f"\nside by side, {num:,} names per call, {repeats} repeats each, in turn:")
    for label, t in times.items():
        name = f"{SAMPLER} at {revision}" if label == "before" else f"{SAMPLER} now"
        print(f"  {name:<32} median {statistics.median(t):.3f} s  {rates[label]:>10,.0f} names/s "
              f"(fastest call {best[label]:,.0f} names/s)")
    print(f"  now / {revision}: {rates['after'] / rates['before']:.2f}x names/s "
          f"(fastest calls: {best['after'] / best['before']:.2f}x)")


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", help="run directory (default: lecture-size model, random weights)")
    p.add_argument("--num", type=int, default=100_000, help="names per batched call (default 100,000)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats, median reported (default 5)")
    p.add_argument("--loop-names", type=int, default=2_000,
                   help="names drawn by the one-at-a-time loop (default 2,000)")
    p.add_argument("--latency-calls", type=int, default=200,
                   help="single-name generate calls on the SavedModel (default 200)")
    p.add_argument("--baseline", metavar="REV",
                   help=f"also time {SAMPLER} as it was at this git revision, side by side")
    args = p.parse_args()

    if args.run_dir:
        run = load_run(args.run_dir)
        model, vocab, label = run.model, run.vocab, f"{args.run_dir} (dev loss {run.metrics.get('dev_loss', float('nan')):.3f})"
    else:
        vocab = Vocabulary("abcdefghijklmnopqrstuvwxyz")
        model = build_model(len(vocab), block_size=3, n_embd=10, n_hidden=200, seed=0)
        run, label = None, "lecture-size model, random weights"
    block_size = int(model.input_shape[-1])
    print(f"model: {label}; {model.count_params():,} parameters, block_size {block_size}")
    print(f"threads: TensorFlow intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}; "
          f"{__import__('os').cpu_count()} CPUs")

    # --- batched, in-graph -------------------------------------------------------------------
    lm = NameModel(model, vocab)
    started = time.perf_counter()
    lm.sample(args.num, seed=0)  # traces the tf.function and warms up
    warmup = time.perf_counter() - started
    names = []
    times = timed(lambda: names.append(lm.sample(args.num, seed=len(names) + 1)), args.repeats)
    batched = args.num / statistics.median(times)
    mean_len = np.mean([len(n) for n in names[-1]])
    print(f"\nbatched in-graph sampler: {args.num:,} names per call, trace + warm-up call "
          f"{warmup:.2f} s")
    print(f"  per call: median {statistics.median(times):.3f} s (min {min(times):.3f}, "
          f"max {max(times):.3f}, {args.repeats} repeats); mean name length {mean_len:.2f}")
    print(f"  {batched:,.0f} names/s")

    if args.baseline:
        compare_with_baseline(model, vocab, args.baseline, args.num, args.repeats)

    # --- the lecture's loop --------------------------------------------------------------------
    layers = [layer.name for layer in model.layers if layer.weights]
    if layers != ["embedding", "hidden", "logits"]:
        print(f"\nlecture loop: skipped (it ports only the one-hidden-layer model; layers: {layers})")
        return
    weights = [np.asarray(w, np.float32) for w in model.get_weights()]
    probe = np.array([[0] * (block_size - 1) + [1]], np.int32)
    C, W1, b1, W2, b2 = weights
    port = np.tanh(C[probe].reshape(1, -1) @ W1 + b1) @ W2 + b2
    diff = float(np.max(np.abs(port - np.asarray(model(probe)))))
    loop_times = timed(lambda: lecture_loop(weights, block_size, args.loop_names, seed=1), 3)
    looped = args.loop_names / statistics.median(loop_times)
    print(f"\nlecture's loop (numpy port, max |logit difference| to Keras {diff:.1e}): "
          f"{args.loop_names:,} names, median {statistics.median(loop_times):.3f} s of 3")
    print(f"  {looped:,.0f} names/s")
    print(f"\nbatched / lecture loop: {batched / looped:,.0f}x")

    # --- SavedModel latency --------------------------------------------------------------------
    if run is None:
        return
    from kmlp.export.savedmodel import export_run

    with tempfile.TemporaryDirectory() as tmp:
        path = export_run(run, export_root=tmp)
        generate = tf.saved_model.load(str(path)).signatures["generate"]
        call = lambda i: generate(count=tf.constant(1), seed=tf.constant(i, tf.int64),
                                  temperature=tf.constant(1.0))["names"]
        started = time.perf_counter()
        call(0)
        first = time.perf_counter() - started
        latencies = []
        for i in range(args.latency_calls):
            started = time.perf_counter()
            call(i + 1).numpy()
            latencies.append(time.perf_counter() - started)
    q = np.percentile(np.array(latencies) * 1e3, [50, 90, 99])
    print(f"\nSavedModel 'generate' signature, one name per call, in-process: first call {first * 1e3:.0f} ms; "
          f"p50 {q[0]:.2f} ms, p90 {q[1]:.2f} ms, p99 {q[2]:.2f} ms over {args.latency_calls} calls")


if __name__ == "__main__":
    main()
