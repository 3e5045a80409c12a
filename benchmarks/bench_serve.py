"""Load on ``kmlp serve``: latency and throughput of TensorFlow Serving's REST API from concurrent
clients on 127.0.0.1, and the server's memory before and after.

    kmlp train --preset fast --out saved_models/fast
    python benchmarks/bench_serve.py saved_models/fast               # 16 clients for 30 s

It starts ``kmlp serve RUN_DIR`` on a free port of 127.0.0.1, warms it up, then
  1. one client sends each kind of request in turn for ``--single-seconds`` (latency on an idle server),
  2. ``--clients`` clients (threads, each on its own keep-alive connection) send the kinds in turn
     for ``--duration`` seconds,
and prints requests/s, p50/p99 latency per kind, the number of errors (any answer but 200) and the
server's resident memory (RSS) before and after the load. The kinds are ``generate`` with 1 and
with 100 names, and ``score`` of 10 names. The clients run in this process on the same cores as
the server, so the figures include their share of the CPU. Exit status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCORED = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "amelia", "harper", "evelyn", "abigail"]


def requests_by_kind(model: str) -> dict:
    """Request bodies by kind; ``{seed}`` makes each generate call draw other names."""
    path = f"/v1/models/{model}:predict"
    generate = lambda n: (path, lambda i: {"signature_name": "generate",  # noqa: E731
                                           "inputs": {"count": n, "seed": i, "temperature": 1.0}})
    return {"generate 1 name": generate(1), "generate 100 names": generate(100),
            "score 10 names": (path, lambda i: {"signature_name": "score", "instances": SCORED})}


class Client:
    """One keep-alive connection; ``send`` returns (status, seconds)."""

    def __init__(self, host: str, port: int):
        self.connection = http.client.HTTPConnection(host, port, timeout=60)

    def send(self, path: str, body: dict) -> tuple[int, float]:
        data = json.dumps(body).encode()
        started = time.perf_counter()
        try:
            self.connection.request("POST", path, data, {"Content-Type": "application/json"})
            response = self.connection.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            self.connection.close()  # reconnects on the next request
            status = 0
        return status, time.perf_counter() - started


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (Linux /proc)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


def start_server(run_dir: str, timeout: float = 300) -> tuple[subprocess.Popen, str, int]:
    process = subprocess.Popen([sys.executable, "-m", "kmlp", "serve", run_dir, "--port", "0"],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while True:
        line = process.stdout.readline()
        if not line or time.monotonic() > deadline:
            process.kill()
            sys.exit(f"bench_serve: kmlp serve {run_dir} did not start (exit status {process.poll()})")
        match = re.search(r"playground:\s+http://([\d.]+):(\d+)/", line)
        if match:
            threading.Thread(target=process.stdout.read, daemon=True).start()  # keep the pipe drained
            return process, match.group(1), int(match.group(2))


def drive(host: str, port: int, kinds: dict, clients: int, seconds: float) -> dict:
    """``clients`` threads sending the kinds in turn until ``seconds`` pass: latencies by kind."""
    latencies = {kind: [] for kind in kinds}
    errors = {kind: 0 for kind in kinds}
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    names = list(kinds)

    def client(index: int) -> None:
        conn, i = Client(host, port), index
        while time.perf_counter() < deadline:
            kind = names[i % len(names)]
            path, body = kinds[kind]
            status, took = conn.send(path, body(i))
            with lock:
                latencies[kind].append(took)
                errors[kind] += status != 200
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - started}


def report(title: str, result: dict) -> int:
    total = sum(len(v) for v in result["latencies"].values())
    errors = sum(result["errors"].values())
    print(f"\n{title}: {total:,} requests in {result['seconds']:.1f} s, "
          f"{total / result['seconds']:,.1f} requests/s, errors {errors}")
    print(f"  {'request':<20} {'count':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, values in result["latencies"].items():
        ms = sorted(v * 1e3 for v in values)
        p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))] if ms else float("nan")
        print(f"  {kind:<20} {len(ms):>7,} {len(ms) / result['seconds']:>8,.1f} "
              f"{statistics.median(ms) if ms else float('nan'):>8.2f} {p99:>8.2f}")
    return errors


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="run directory written by kmlp train")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of concurrent load (default 30)")
    p.add_argument("--single-seconds", type=float, default=6.0,
                   help="seconds of one client, before the load (default 6)")
    p.add_argument("--model-name", default="kmlp", help="model name in the URLs (default kmlp)")
    args = p.parse_args()
    for flag, value in (("--clients", args.clients), ("--duration", args.duration),
                        ("--single-seconds", args.single_seconds)):
        if not value > 0:
            print(f"bench_serve: error: {flag} must be positive, got {value}", file=sys.stderr)
            return 2

    process, host, port = start_server(args.run_dir)
    try:
        kinds = requests_by_kind(args.model_name)
        drive(host, port, kinds, 2, 2.0)  # warm-up: first calls of each signature
        before = rss_mb(process.pid)
        print(f"kmlp serve {args.run_dir} (pid {process.pid}) on http://{host}:{port}; "
              f"server memory after warm-up {before:,.1f} MB")
        errors = report("one client", drive(host, port, kinds, 1, args.single_seconds))
        peak = [before]
        sampling = threading.Event()

        def sample_memory():
            while not sampling.wait(0.5):
                peak.append(rss_mb(process.pid))

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        errors += report(f"{args.clients} clients", drive(host, port, kinds, args.clients, args.duration))
        sampling.set()
        after = rss_mb(process.pid)
        print(f"\nserver memory (RSS): {before:,.1f} MB before the load, {after:,.1f} MB after "
              f"({after - before:+,.1f} MB), peak {max(peak + [after]):,.1f} MB")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = "killed after 30 s"
    print(f"server stopped by SIGINT: exit status {code}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
