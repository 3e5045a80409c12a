"""kmlp.serving.playground: the page and its files, the page's API (names with their marks, the
probabilities of a typed name, the embedding), its refusals, and the page driven in a real browser
(headless Chromium)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from serving_helpers import LIMIT_STR, assert_refused_then_served, run_script, splits_of

from kmlp.generation.sample import where_found
from kmlp.serving.limits import Limits
from kmlp.serving.playground import Playground

pytest_plugins = ["serving_fixtures"]
ARTIFACTS = ROOT / "tests" / "artifacts"  # git-ignored: the browser test's screenshot


# ---------------------------------------------------------------------------------------------
# The page and the page's API


def test_playground_page_and_files_are_served_with_a_strict_policy(server):
    status, kind, page = server.request("GET", "/")
    assert status == 200 and kind.startswith("text/html") and "/static/playground.js" in page
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/")
    headers = dict(conn.getresponse().getheaders())
    conn.close()
    assert headers["content-security-policy"].startswith("default-src 'self'")
    for name, media in (("playground.js", "javascript"), ("playground.css", "text/css")):
        status, kind, text = server.request("GET", f"/static/{name}")
        assert status == 200 and media in kind and "http" not in text.replace("http://www.w3.org", "")
    status, _, _ = server.request("GET", "/", headers={"Host": "evil.example:80"})
    assert status == 400  # a foreign Host header (DNS rebinding) is refused on a loopback server


def test_playground_info_generate_and_inspect(server):
    run, lm = server.run, server.lm
    info = server.ok("GET", "/playground/info")
    assert info["tokens"] == [".", *run.vocab.chars] and info["model"] == "kmlp" and info["version"] == 1
    assert len(info["embedding"]["points"]) == len(run.vocab) and info["marks_unavailable"] is None
    assert info["limits"]["max_count"] == Limits.max_count

    body = {"count": 12, "temperature": 0.8, "top_k": 5, "prefix": "a", "seed": 4, "max_len": 20}
    got = server.ok("POST", "/playground/generate", body)
    names = lm.sample(12, seed=4, temperature=0.8, top_k=5, prefix="a", max_len=20)
    splits = splits_of(run)
    assert got["names"] == [{"name": n, "found_in": m} for n, m in zip(names, where_found(names, splits))]
    assert got["new"] == sum(m == "new" for m in where_found(names, splits)) and got["seed"] == 4

    shown = server.ok("POST", "/playground/inspect", {"text": "emma"})
    assert [r["context"] for r in shown["rows"]] == ["...", "..e", ".em", "emm", "mma"]
    assert [r["next"] for r in shown["rows"]] == ["e", "m", "m", "a", "."]
    expected = lm.next_probs(lm.context_ids(np.array(["", "e", "em", "emm", "emma"]))).numpy()
    np.testing.assert_allclose([r["probs"] for r in shown["rows"]], expected, atol=1e-6)
    picked = [expected[k, run.vocab.stoi.get(c, 0)] for k, c in enumerate("emma.")]
    np.testing.assert_allclose([r["p"] for r in shown["rows"]], picked, atol=1e-6)
    (total, tokens), = lm.score(["emma"])
    assert shown["log_likelihood"] == pytest.approx(total, abs=1e-5) == pytest.approx(np.log(picked).sum(), abs=1e-4)
    assert shown["per_char"] == pytest.approx(total / tokens, abs=1e-5) and shown["found_in"] == "train"


def test_playground_says_marks_are_unavailable_when_the_data_file_is_gone(server, tmp_path):
    run = dataclasses.replace(server.run, info={**server.run.info, "data": str(tmp_path / "gone.txt")})
    playground = Playground(run, server.served)
    assert "gone.txt: no such file" in playground.info["marks_unavailable"]
    got = playground.generate({"count": 3})
    assert [n["found_in"] for n in got["names"]] == [None] * 3 and got["new"] is None
    assert "no such file" in got["marks_unavailable"]
    assert playground.inspect({"text": "ava"})["found_in"] is None


BAD_REQUESTS = [
    ("playground: count 0", "POST", "/playground/generate", {"count": 0}, "count must be an integer from 1"),
    ("playground: temperature -1", "POST", "/playground/generate", {"temperature": -1},
     "temperature must be a positive number"),
    ("playground: top-k -1", "POST", "/playground/generate", {"top_k": -1}, "top_k must be an integer from 0"),
    ("playground: max_len 10^6", "POST", "/playground/generate", {"max_len": 10**6},
     "max_len must be an integer from 1 to 100"),
    ("playground: seed -1", "POST", "/playground/generate", {"seed": -1}, "seed must be an integer from 0"),
    ("playground: prefix outside the vocabulary", "POST", "/playground/generate", {"prefix": "\u00eb"},
     "outside the model's vocabulary"),
    ("playground: unknown field", "POST", "/playground/generate", {"top_p": 0.9}, "unknown field 'top_p'"),
    ("playground: name outside the vocabulary", "POST", "/playground/inspect", {"text": "zo\u00eb"},
     "outside the model's vocabulary"),
    ("playground: name over the limit", "POST", "/playground/inspect", {"text": LIMIT_STR}, "the limit is 100"),
    ("playground: malformed JSON", "POST", "/playground/inspect", b"{", "JSON Parse error"),
]


@pytest.mark.parametrize("what, method, path, body, message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_400_and_the_next_one_is_answered(server, what, method, path, body, message):
    assert_refused_then_served(server, method, path, body, message)


# ---------------------------------------------------------------------------------------------
# The page in a real browser


def load_screenshot_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("playground_screenshot",
                                                  ROOT / "benchmarks" / "playground_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium and chromium-driver, installed with apt-get when missing (as CI starts from
    a clean machine). Missing and not installable is a failure, never a skip."""
    script = load_screenshot_script()
    missing = [p for p in (script.CHROMIUM, script.CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.fail(f"{', '.join(missing)} missing, and only root can install them here: run "
                        "`apt-get install chromium chromium-driver` as root")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command, limit in ((["apt-get", "update", "-q"], 300),
                               (["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"], 900)):
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=limit, env=env)
            except subprocess.TimeoutExpired:
                pytest.fail(f"`{' '.join(command)}` did not finish within {limit} s")
            if done.returncode != 0:
                pytest.fail(f"`{' '.join(command)}` failed (exit {done.returncode}): "
                            f"{(done.stderr or done.stdout)[-1500:]}")
    missing = [p for p in (script.CHROMIUM, script.CHROMEDRIVER) if not os.path.exists(p)]
    assert not missing, f"still missing after apt-get install: {missing}"
    return script


def test_playground_in_headless_chromium(server, chromium):
    shot = ARTIFACTS / "playground.png"
    shot.unlink(missing_ok=True)
    done = run_script([sys.executable, str(ROOT / "benchmarks" / "playground_screenshot.py"),
                       "--url", f"http://127.0.0.1:{server.port}/", "--out", str(shot), "--json",
                       "--count", "8", "--top-k", "5", "--seed", "3", "--name", "emma"], timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout)
    run, lm = server.run, server.lm
    names = lm.sample(8, seed=3, top_k=5)  # what the page's controls asked for
    marks = where_found(names, splits_of(run))
    assert [n["name"] for n in seen["names"]] == names
    assert [n["found_in"] for n in seen["names"]] == marks
    assert [n["mark"] for n in seen["names"]] == [{"dev": "dev/test", "test": "dev/test"}.get(m, m) for m in marks]
    assert seen["errors"] == [] and seen["embedding_points"] == len(run.vocab)
    assert [r["context"] for r in seen["rows"]] == ["...", "..e", ".em", "emm", "mma"]
    assert [r["next"] for r in seen["rows"]] == ["e", "m", "m", "a", "."]
    expected = lm.next_probs(lm.context_ids(np.array(["", "e", "em", "emm", "emma"]))).numpy()
    np.testing.assert_allclose([r["cells"] for r in seen["rows"]], expected, atol=1e-6)
    assert all(len(r["outlined"]) == 1 and r["outlined"][0].startswith(f"P({r['next']} after")
               for r in seen["rows"])
    assert "log-likelihood" in seen["inspect_summary"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
