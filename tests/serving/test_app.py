"""kmlp.serving.app: the routes over real HTTP (wrong paths and methods, internal errors, concurrent
clients, the work bound), the version served, the README's curl examples, ``kmlp serve`` starting and
stopping, and the load benchmark."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
from conftest import ROOT
from serving_helpers import PREDICT, Served, assert_refused_then_served, exchange, generate, run_script

from kmlp.serving.app import INTERNAL_ERROR, Work, latest_export
from kmlp.serving.limits import Limits
from kmlp.serving.rest import RequestError, dumps
from kmlp.serving.served_model import ServedModel

pytest_plugins = ["serving_fixtures"]


# ---------------------------------------------------------------------------------------------
# Routes


BAD_REQUESTS = [
    ("classify", "POST", "/v1/models/kmlp:classify", {"examples": [{"x": 1}]}, "answers :predict"),
    ("version label", "POST", "/v1/models/kmlp/labels/stable:predict", generate(),
     "Unrecognized servable version label: stable"),
    ("GET on predict", "GET", PREDICT, None, "Malformed request: GET /v1/models/kmlp:predict"),
    ("POST on metadata", "POST", "/v1/models/kmlp/metadata", generate(), "Malformed request: POST"),
    ("PUT", "PUT", "/v1/models/kmlp", b"", "Malformed request: PUT"),
]


@pytest.mark.parametrize("what, method, path, body, message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_400_and_the_next_one_is_answered(server, what, method, path, body, message):
    assert_refused_then_served(server, method, path, body, message)


def test_wrong_model_version_or_path_gets_404(server):
    for method, path, body, message in (
            ("POST", "/v1/models/other:predict", generate(), "Servable not found for request: Latest(other)"),
            ("POST", "/v1/models/kmlp/versions/7:predict", generate(), "Specific(kmlp, 7)"),
            ("GET", "/nothing/here", None, "Not found: /nothing/here"),
            ("POST", "/playground/nothing", {}, "Not found")):
        status, kind, answer = server.request(method, path, body)
        assert (status, kind) == (404, "application/json") and message in answer["error"], answer


def test_an_internal_error_is_a_500_with_one_line_and_no_traceback(server, monkeypatch):
    from starlette.staticfiles import StaticFiles

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.served, "predict", broken)
    monkeypatch.setattr(StaticFiles, "get_response", broken)  # outside the routes kmlp wraps
    for method, path, body in (("POST", PREDICT, generate()), ("GET", "/static/playground.js", None)):
        assert server.request(method, path, body) == (500, "application/json", {"error": INTERNAL_ERROR})
    monkeypatch.undo()
    assert server.ok("POST", PREDICT, generate(count=1))["outputs"]


def test_errors_found_outside_the_routes_are_json_too(server):
    """Starlette's refusals and the Host check answer TensorFlow Serving's `{"error": ...}`."""
    for method, path, headers, status, message in (
            ("GET", "/static/nothing.js", {}, 404, "Not found: /static/nothing.js"),
            ("DELETE", "/static/playground.js", {}, 405, "Method Not Allowed: DELETE /static/playground.js"),
            ("GET", "/v1/models/kmlp", {"Host": "evil.example:80"}, 400,
             "Host header 'evil.example:80' is not a name of this server (127.0.0.1, localhost, [::1])")):
        assert server.request(method, path, headers=headers) == (status, "application/json", {"error": message})
    for host in ("localhost", "LOCALHOST:8501", "[::1]:8501", "127.0.0.1:1"):
        assert server.request("GET", "/v1/models/kmlp", headers={"Host": host})[0] == 200, host


def request_bytes(method: str, path: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


def test_head_gets_what_get_would_without_the_body(server):
    """HTTP's rule: GET's status and headers, no body; an error's are JSON's. On the REST API's
    paths, TensorFlow Serving's answer to any method but GET and POST: 400, a malformed request."""
    for path in ("/", "/static/playground.css", "/playground/info", "/static/nothing.js", "/nothing/here"):
        got = exchange(server.port, request_bytes("GET", path))
        status, headers, body = exchange(server.port, request_bytes("HEAD", path))
        assert (status, body) == (got[0], b"") and got[2], path
        assert [headers[k] for k in ("content-type", "content-length")] == \
            [got[1][k] for k in ("content-type", "content-length")], path
        assert status == 200 or headers["content-type"] == "application/json", path
    status, headers, body = exchange(server.port, request_bytes("HEAD", "/v1/models/kmlp"))
    error = dumps({"error": "Malformed request: HEAD /v1/models/kmlp"})
    assert (status, headers["content-type"], int(headers["content-length"]), body) == (
        400, "application/json", len(error), b"")


def test_concurrent_clients_all_get_their_own_answers(server):
    expected = {seed: server.lm.sample(4, seed=seed) for seed in range(8)}
    failures = []

    def client(k):
        for i in range(6):
            seed = (k + i) % 8
            status, _, answer = server.request("POST", PREDICT, generate(count=4, seed=seed))
            if status != 200 or answer["outputs"] != expected[seed]:
                failures.append((k, i, status, answer))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]


def test_work_beyond_the_pending_limit_is_refused_with_503():
    work = Work(Limits(max_workers=1, max_pending=2))
    gate = threading.Event()

    async def main():
        first = asyncio.ensure_future(work(gate.wait, 30))
        second = asyncio.ensure_future(work(gate.wait, 30))
        await asyncio.sleep(0.05)
        with pytest.raises(RequestError) as refused:
            await work(lambda: None)
        assert refused.value.status == 503 and "server busy" in str(refused.value)
        gate.set()
        assert await first and await second
        assert await work(lambda: 7) == 7

    try:
        asyncio.run(main())
    finally:
        gate.set()
        work.pool.shutdown()


# ---------------------------------------------------------------------------------------------
# The version served


def test_the_latest_version_is_served_and_an_incomplete_one_refused(server, tmp_path):
    from kmlp.errors import RunError
    from kmlp.export.savedmodel import export_run
    from kmlp.runs.rundir import load_run

    run_dir = tmp_path / "run"
    shutil.copytree(server.run.path, run_dir)
    run = load_run(run_dir)
    assert latest_export(run) == run_dir / "export" / "1"
    assert export_run(run) == run_dir / "export" / "2"
    served = ServedModel(latest_export(run))
    assert served.version == 2 and served.status("kmlp", None, None)["model_version_status"][0]["version"] == "2"
    with pytest.raises(RequestError, match="Could not find version 1 of model kmlp"):
        served.status("kmlp", 1, None)
    (run_dir / "export" / "3").mkdir()  # a version folder with nothing in it
    with pytest.raises(RunError, match="not a SavedModel"):
        latest_export(run)


# ---------------------------------------------------------------------------------------------
# The README's curl examples


def test_readme_curl_examples_answer(server):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Serving over HTTP"):]
    section = section[:section.find("\n## ", 5)]
    commands = re.findall(r"^curl (?:-d '(.*?)' )?http://127\.0\.0\.1:8501(\S+)$", section, re.M)
    assert len(commands) >= 5, commands
    paths = set()
    for body, path in commands:
        answer = server.ok("POST" if body else "GET", path, json.loads(body) if body else None)
        assert answer, path
        paths.add(path)
    assert {"/v1/models/kmlp", "/v1/models/kmlp/metadata", PREDICT} <= paths


# ---------------------------------------------------------------------------------------------
# kmlp serve: start, answer, stop on Ctrl-C and SIGTERM; flag errors


@contextmanager
def kmlp_serve(run_dir, start_within: float = 180):
    """``kmlp serve RUN_DIR --port 0`` in a fresh process: yields (process, port, what it said up to
    "Ctrl-C stops the server"). Killed if it has not started within ``start_within`` seconds (which
    ends the wait for its next line), and at the end if still running."""
    env = {k: v for k, v in os.environ.items() if k != "KMLP_TF_LOGS"}
    process = subprocess.Popen([sys.executable, "-m", "kmlp", "serve", str(run_dir), "--port", "0"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(start_within, process.kill)
    watchdog.start()
    try:
        lines = []
        while not lines or "Ctrl-C stops the server" not in lines[-1]:
            line = process.stdout.readline()
            if not line:
                process.kill()
                pytest.fail(f"kmlp serve did not start within {start_within} s: "
                            f"{''.join(lines)}{process.stderr.read()[-2000:]}")
            lines.append(line)
        watchdog.cancel()
        port = int(re.search(r"playground:\s+http://127\.0\.0\.1:(\d+)/", "".join(lines)).group(1))
        yield process, port, "".join(lines)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait(30)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_serves_and_stops_cleanly(server, tmp_path, stop):
    run_dir = tmp_path / "run"
    exports = stop == signal.SIGINT  # once from a run without an export, once from one with (the server's)
    shutil.copytree(server.run.path, run_dir, ignore=shutil.ignore_patterns("export") if exports else None)
    with kmlp_serve(run_dir) as (process, port, said):
        assert (f"exported {run_dir}" in said) == exports and "REST API:" in said
        client = Served(port, None, None, None)
        assert client.ok("GET", "/v1/models/kmlp")["model_version_status"][0]["state"] == "AVAILABLE"
        assert len(client.ok("POST", PREDICT, generate(count=5))["outputs"]) == 5
        process.send_signal(stop)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    assert "kmlp serve: stopped" in out and "Traceback" not in err, err[-2000:]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_cli_flag_errors_name_the_flag(server, tmp_path):
    """Each mistake in a process of its own, all running at once: exit status 2 and one line."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    run = ["serve", str(server.run.path), "--port", "0"]
    mistakes = [(run + ["--port", "70000"], "--port must be from 0"),
                (run + ["--port", str(port)], f"--port {port}: already in use"),
                (run + ["--model-name", "a/b"], "--model-name must be a name"),
                (run + ["--host", "no-such-host.invalid"], "--host no-such-host.invalid"),
                (run + ["--data", str(tmp_path / "gone.txt")], "gone.txt: no such file"),
                (["serve", str(tmp_path / "nowhere")], "no such run directory")]
    processes = []
    try:
        for args, _ in mistakes:
            processes.append(subprocess.Popen([sys.executable, "-m", "kmlp", *args], cwd=ROOT, text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        deadline = time.monotonic() + 180
        for (args, message), process in zip(mistakes, processes):
            _, err = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            assert process.returncode == 2, (args, err[-2000:])
            assert err.startswith("kmlp: error: ") and message in err, (args, err)
            assert "Traceback" not in err
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(30)
        taken.close()


# ---------------------------------------------------------------------------------------------
# The load benchmark (a smoke test: nothing is timed)


def test_bench_serve_reports_latency_throughput_errors_and_memory(server):
    done = run_script([sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), str(server.run.path),
                       "--clients", "4", "--duration", "2", "--single-seconds", "1"], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    out = done.stdout
    print(out)
    assert re.search(r"^one client: [\d,]+ requests in [\d.]+ s, [\d,.]+ requests/s, errors 0$", out, re.M)
    assert re.search(r"^4 clients: [\d,]+ requests in [\d.]+ s, [\d,.]+ requests/s, errors 0$", out, re.M)
    for kind in ("generate 1 name", "generate 100 names", "score 10 names"):
        assert len(re.findall(rf"^  {kind}\s+[\d,]+\s+[\d,.]+\s+[\d.]+\s+[\d.]+$", out, re.M)) == 2, kind
    assert re.search(r"server memory \(RSS\): [\d,.]+ MB before the load, [\d,.]+ MB after", out)
    assert "server stopped by SIGINT: exit status 0" in out
