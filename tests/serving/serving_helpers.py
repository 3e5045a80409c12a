"""Helpers of the serving tests: a server on a free port of 127.0.0.1 in a thread of this process, a
client for it, raw HTTP on a socket, request bodies, and scripts run bounded in time. The fixtures are
in serving_fixtures.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager

from conftest import ROOT

from kmlp.generation.sample import NameModel
from kmlp.serving.app import bind, server_config
from kmlp.serving.limits import Limits

PREDICT = "/v1/models/kmlp:predict"
LIMIT_STR = "a" * (Limits.max_chars + 1)  # a string one character over the limit


@contextmanager
def running(app, limits=Limits()):
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1; yields the port, always stops."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app, limits))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@dataclasses.dataclass
class Served:
    port: int
    served: object      # kmlp.serving.served_model.ServedModel
    run: object         # the run, loaded
    lm: NameModel

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 120):
        """(status, content type, parsed JSON or text) of one request on a fresh connection."""
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, data, headers or {})
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        kind = response.getheader("Content-Type", "")
        return response.status, kind, json.loads(raw) if "json" in kind else raw.decode("utf-8", "replace")

    def ok(self, method: str, path: str, body=None):
        status, kind, answer = self.request(method, path, body)
        assert status == 200 and kind == "application/json", (status, answer)
        return answer


def read_until_closed(sock, within: float) -> tuple[bytes, float | None]:
    """What the server sends on ``sock`` until it closes it, and when it closed it (time.monotonic());
    None if it is still open after ``within`` seconds."""
    deadline, data = time.monotonic() + within, b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return data, time.monotonic()
        data += chunk
    return data, None


def answer_parts(raw: bytes) -> tuple[int, dict, bytes]:
    """(status, headers by lower-case name, body) of one HTTP answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), raw[:200]
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split(" ", 2)[1]), headers, body


def parse_answer(raw: bytes) -> tuple[int, dict]:
    """(status, JSON body) of one HTTP answer the server sent before closing."""
    status, _, body = answer_parts(raw)
    return status, json.loads(body)


def exchange(port: int, request: bytes, within: float = 30) -> tuple[int, dict, bytes]:
    """Send ``request`` whole on a fresh connection, then read until the server closes it (the
    request says ``Connection: close``): (status, headers, body) of the answer. The server may answer
    and close before the request is all sent (a head over the limit): its answer is read all the same."""
    with socket.create_connection(("127.0.0.1", port), timeout=within) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw, closed = read_until_closed(sock, within)
    assert closed is not None, f"still open after {within} s: {raw[:200]!r}"
    return answer_parts(raw)


def splits_of(run) -> dict:
    """The run's train/dev/test names, as the playground marks them."""
    from kmlp.data.pipeline import NamesData

    return NamesData.for_config(run.info["data"], run.config, vocab=run.vocab).words


def generate(**inputs):
    return {"signature_name": "generate", "inputs": {"count": 3, "seed": 1, "temperature": 1.0, **inputs}}


def assert_refused_then_served(server, method, path, body, message):
    """The request gets 400 with a one-line JSON error containing ``message``, and the next request
    is answered as usual."""
    status, kind, answer = server.request(method, path, body)
    assert (status, kind) == (400, "application/json"), answer
    assert set(answer) == {"error"} and message in answer["error"], answer
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
    assert server.ok("POST", PREDICT, generate(count=2, seed=9)) == {"outputs": server.lm.sample(2, seed=9)}


def run_script(args, timeout: float) -> subprocess.CompletedProcess:
    """Run ``args`` from the project's root in a session of its own; past ``timeout`` seconds (or on
    any failure here) it is killed with every process it started (a server, a browser)."""
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:  # subprocess.TimeoutExpired, or the test run interrupted
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(args, process.returncode, out, err)
