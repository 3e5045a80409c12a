"""LiteRT export: the size of model.tflite and the time to generate one name with the reference loop
(kmlp.export.litert, the LiteRT interpreter alone), beside one ``generate`` call on the SavedModel, timed in
turn in the same process.

    kmlp train --preset lecture --out /tmp/lecture --samples 0
    python benchmarks/bench_litert.py /tmp/lecture          # 300 names each way

The reference loop calls the interpreter once per character with one context (batch 1), as a
phone app generating a name would; the SavedModel draws the whole name inside one graph call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kmlp.utils.quiet import silence_tensorflow  # noqa: E402

silence_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kmlp.export.litert import LiteRTModel, generate_names  # noqa: E402
from kmlp.export.savedmodel import export_run  # noqa: E402
from kmlp.runs.rundir import load_run  # noqa: E402


def percentiles(seconds: list[float]) -> str:
    p50, p90, p99 = np.percentile(np.array(seconds) * 1e3, [50, 90, 99])
    return f"p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="run directory written by kmlp train")
    p.add_argument("--calls", type=int, default=300, help="names generated one at a time, each way (default 300)")
    args = p.parse_args()
    if args.calls < 1:
        p.error(f"--calls must be a positive integer, got {args.calls}")

    run = load_run(args.run_dir)
    print(f"model: {args.run_dir}; {run.model.count_params():,} parameters, "
          f"block_size {run.config.block_size}, vocabulary {len(run.vocab)}")
    with tempfile.TemporaryDirectory() as tmp:
        litert_dir = export_run(run, format="litert", export_root=Path(tmp) / "litert")
        saved_dir = export_run(run, export_root=Path(tmp) / "export")
        tflite = litert_dir / "model.tflite"
        print(f"model.tflite: {tflite.stat().st_size:,} bytes ({tflite.stat().st_size / 1024:.1f} KiB); "
              f"model.json: {tflite.with_suffix('.json').stat().st_size:,} bytes")

        model = LiteRTModel(tflite)
        generate = tf.saved_model.load(str(saved_dir)).signatures["generate"]
        context = np.zeros((1, run.config.block_size), np.int32)
        generate_names(model, 1, seed=0), model.logits(context)  # warm up both
        generate(count=tf.constant(1), seed=tf.constant(0, tf.int64), temperature=tf.constant(1.0))
        litert, saved, invoke, lengths = [], [], [], []
        for i in range(args.calls):
            started = time.perf_counter()
            lengths.append(len(generate_names(model, 1, seed=i + 1)[0]))
            litert.append(time.perf_counter() - started)
            started = time.perf_counter()
            generate(count=tf.constant(1), seed=tf.constant(i + 1, tf.int64),
                     temperature=tf.constant(1.0))["names"].numpy()
            saved.append(time.perf_counter() - started)
            started = time.perf_counter()
            model.logits(context)
            invoke.append(time.perf_counter() - started)
    print(f"\none name ({args.calls} names each way, in turn; mean length {statistics.mean(lengths):.2f} "
          f"characters):")
    print(f"  LiteRT reference loop (kmlp.export.litert)  {percentiles(litert)}")
    print(f"  SavedModel 'generate', in-process    {percentiles(saved)}")
    print(f"  one interpreter call, one context    {percentiles(invoke)}")
    print(f"  LiteRT / SavedModel, p50: {np.median(litert) / np.median(saved):.2f}x the time")


if __name__ == "__main__":
    main()
