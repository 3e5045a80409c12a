"""kmlp.serve: TensorFlow Serving's REST API over real HTTP, the playground's endpoints, ``kmlp serve``
starting and stopping, the load benchmark, and the page driven in a real browser (headless Chromium)."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import ROOT, train_tiny_run
from hypothesis import given, settings
from hypothesis import strategies as st

from kmlp.sample import NameModel, where_found
from kmlp.serve import (Limits, Playground, RequestError, Work, bind, build_app, create_app,
                        json_to_tensor, latest_export, local_hosts, server_config, tf_error_message,
                        to_json_values)

PREDICT = "/v1/models/kmlp:predict"
ARTIFACTS = ROOT / "tests" / "artifacts"  # git-ignored: the browser test's screenshot


# ---------------------------------------------------------------------------------------------
# A server on a free port of 127.0.0.1, in a thread of this process


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
    served: object      # kmlp.serve.ServedModel
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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(tiny):
    assert not (tiny.path / "export").exists()
    said = []
    app, served = create_app(tiny.path, allowed_hosts=local_hosts("127.0.0.1"), log=said.append)
    assert said == [f"exported {tiny.path} to {tiny.path / 'export' / '1'} (it had no export)"]
    with running(app) as port:
        yield Served(port, served, tiny, NameModel(tiny.model, tiny.vocab))


def splits_of(run) -> dict:
    """The run's train/dev/test names, as the playground marks them."""
    from kmlp.data import NamesData

    return NamesData.for_config(run.info["data"], run.config, vocab=run.vocab).words


def generate(**inputs):
    return {"signature_name": "generate", "inputs": {"count": 3, "seed": 1, "temperature": 1.0, **inputs}}


# ---------------------------------------------------------------------------------------------
# Status and metadata


def test_status_of_the_served_version(server):
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert server.ok("GET", "/v1/models/kmlp") == expected
    assert server.ok("GET", "/v1/models/kmlp/versions/1") == expected
    assert server.ok("GET", "/V1/Models/kmlp") == expected  # case-insensitive, as TensorFlow Serving's patterns
    for path, status, message in (("/v1/models/kmlp/versions/2", 404, "Could not find version 2 of model kmlp"),
                                  ("/v1/models/other", 404, "Could not find any versions of model other"),
                                  ("/v1/models/kmlp/labels/stable", 400, "Unrecognized servable version label"),
                                  ("/v1/models", 400, "Missing model name in request.")):
        got = server.request("GET", path)
        assert got[:2] == (status, "application/json") and message in got[2]["error"], (path, got)


def test_metadata_lists_every_signature_as_the_saved_model_defines_it(server):
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    meta = server.ok("GET", "/v1/models/kmlp/metadata")
    assert server.ok("GET", "/v1/models/kmlp/versions/1/metadata") == meta
    assert meta["model_spec"] == {"name": "kmlp", "signature_name": "", "version": "1"}
    defs = meta["metadata"]["signature_def"]["signature_def"]
    loaded = tf.saved_model.load(str(server.served.path))  # read independently of the server
    assert set(defs) == set(loaded.signatures) | {"__saved_model_init_op"}  # as TensorFlow Serving lists them
    for name, fn in loaded.signatures.items():
        assert defs[name]["method_name"] == "tensorflow/serving/predict"
        for listed, specs in ((defs[name]["inputs"], fn.structured_input_signature[1]),
                              (defs[name]["outputs"], fn.structured_outputs)):
            assert set(listed) == set(specs), name
            for key, spec in specs.items():
                info = listed[key]
                assert tf.dtypes.as_dtype(types_pb2.DataType.Value(info["dtype"])) == spec.dtype
                dims = [int(d["size"]) for d in info["tensor_shape"]["dim"]]
                assert dims == [-1 if d is None else d for d in spec.shape.as_list()], (name, key)
    assert server.request("GET", "/v1/models/kmlp/versions/3/metadata")[2] == {
        "error": "Servable not found for request: Specific(kmlp, 3)"}


# ---------------------------------------------------------------------------------------------
# Predict: every signature, both request formats


def test_every_signature_answers_a_columnar_request_built_from_its_own_inputs(server):
    """Whatever signatures the export has: inputs made from each one's specs, outputs as its specs say."""
    samples = {"string": "em", "int32": 3, "int64": 3, "float32": 1.0, "float64": 1.0, "bool": False}
    for name, sig in server.served.signatures.items():
        inputs = {key: samples[spec.dtype.name] if spec.shape.rank == 0 else [samples[spec.dtype.name]] * 2
                  for key, spec in sig.inputs.items()}
        answer = server.ok("POST", PREDICT, {"signature_name": name, "inputs": inputs})["outputs"]
        outputs = answer if len(sig.outputs) > 1 else {next(iter(sig.outputs)): answer}
        assert set(outputs) == set(sig.outputs), name
        for key, spec in sig.outputs.items():
            shape = np.shape(outputs[key])
            assert spec.shape.is_compatible_with(shape), (name, key, shape)


def test_serving_default_in_both_formats(server):
    lm = server.lm
    contexts = ["", "e", "emm", "..e", "isabella"]
    expected = lm.next_probs(lm.context_ids(np.array(contexts))).numpy()
    tokens = [".", *server.run.vocab.chars]
    for body in ({"inputs": {"context": contexts}}, {"inputs": contexts},
                 {"signature_name": "serving_default", "inputs": contexts}):
        out = server.ok("POST", PREDICT, body)["outputs"]
        np.testing.assert_allclose(out["probabilities"], expected, atol=1e-6)
        assert out["tokens"] == tokens
    # Row format: every output must share the first dimension, and `tokens` has the vocabulary's;
    # TensorFlow Serving refuses such a batch too, unless it is as long as the vocabulary.
    status, _, answer = server.request("POST", PREDICT, {"instances": contexts})
    assert status == 400 and "tokens has inconsistent batch size" in answer["error"]
    rows = server.ok("POST", "/v1/models/kmlp/versions/1:predict",
                     {"instances": (contexts * 10)[:len(tokens)]})["predictions"]
    assert [r["tokens"] for r in rows] == tokens
    np.testing.assert_allclose([r["probabilities"] for r in rows[:5]], expected, atol=1e-6)


def test_generate_and_generate_with_prefix_sample_as_kmlp_does(server):
    lm = server.lm
    out = server.ok("POST", PREDICT, generate(count=20, seed=3))
    assert out == {"outputs": lm.sample(20, seed=3)}
    again = server.ok("POST", "/v1/models/kmlp/versions/1:predict", generate(count=20, seed=3))
    assert again == out
    cooler = server.ok("POST", PREDICT, generate(count=20, seed=3, temperature=0.5))["outputs"]
    assert cooler == lm.sample(20, seed=3, temperature=0.5) != out["outputs"]
    body = {"signature_name": "generate_with_prefix",
            "inputs": {"count": 10, "seed": 5, "temperature": 1.0, "prefix": "el"}}
    named = server.ok("POST", PREDICT, body)["outputs"]
    assert named == lm.sample(10, seed=5, prefix="el") and all(n.startswith("el") for n in named)
    b64 = {**body, "inputs": {**body["inputs"], "prefix": {"b64": "ZWw="}}}  # "el", as binary
    assert server.ok("POST", PREDICT, b64)["outputs"] == named
    # Single-valued inputs cannot be stacked in rows: refused with the reason (TensorFlow Serving
    # fails inside the graph instead).
    status, _, answer = server.request("POST", PREDICT, {"signature_name": "generate",
                                                         "instances": [{"count": 1, "seed": 1, "temperature": 1.0}]})
    assert status == 400 and "columnar format ('inputs')" in answer["error"]


def test_score_in_both_formats(server):
    names = ["emma", "ava", "zoë"]
    (emma, t1), (ava, t2) = server.lm.score(names[:2])
    rows = server.ok("POST", PREDICT, {"signature_name": "score", "instances": names})["predictions"]
    assert [r["tokens"] for r in rows] == [5, 4, 4]
    np.testing.assert_allclose([r["log_likelihood"] for r in rows[:2]], [emma, ava], atol=1e-5)
    np.testing.assert_allclose([r["per_char"] for r in rows[:2]], [emma / t1, ava / t2], atol=1e-5)
    assert rows[2]["log_likelihood"] == -np.inf  # what the SavedModel gives unknown characters
    objects = server.ok("POST", PREDICT, {"signature_name": "score",
                                          "instances": [{"names": n} for n in names]})["predictions"]
    assert objects == rows
    columns = server.ok("POST", PREDICT, {"signature_name": "score", "inputs": {"names": names}})["outputs"]
    assert columns == {key: [r[key] for r in rows] for key in ("log_likelihood", "per_char", "tokens")}
    status, kind, raw = server.request("POST", PREDICT, {"signature_name": "score", "inputs": ["zoë"]},
                                       headers={"Accept": "text/plain"})
    assert status == 200  # JSON with -Infinity, as TensorFlow Serving writes it


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


# ---------------------------------------------------------------------------------------------
# Bad requests: 400 with a JSON error, and the server goes on


LIMIT_STR = "a" * (Limits.max_chars + 1)
BAD_REQUESTS = [
    ("malformed JSON", "POST", PREDICT, b'{"inputs": [', "JSON Parse error"),
    ("empty body", "POST", PREDICT, b"", "The document is empty"),
    ("not UTF-8", "POST", PREDICT, b'{"inputs": ["\xff\xfe"]}', "JSON Parse error"),
    ("nested too deeply", "POST", PREDICT, b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("not an object", "POST", PREDICT, b"[1, 2]", "not a JSON object"),
    ("signature_name not a string", "POST", PREDICT, {"signature_name": 3, "inputs": ["e"]}, "must be a string"),
    ("unknown signature", "POST", PREDICT, {"signature_name": "sample", "inputs": {}},
     'Serving signature name: "sample" not found'),
    ("init op as signature", "POST", PREDICT, {"signature_name": "__saved_model_init_op", "inputs": {}},
     "Failed to get input map"),
    ("both formats", "POST", PREDICT, {"instances": ["e"], "inputs": ["e"]}, "only one of"),
    ("neither format", "POST", PREDICT, {"signature_name": "score"}, "Missing 'inputs' or 'instances' key"),
    ("empty instances", "POST", PREDICT, {"signature_name": "score", "instances": []}, "no values"),
    ("instances not a list", "POST", PREDICT, {"signature_name": "score", "instances": "emma"}, "list/array"),
    ("unknown input name", "POST", PREDICT, generate(top_p=0.9), "unknown input 'top_p'"),
    ("missing input", "POST", PREDICT, {"signature_name": "generate", "inputs": {"count": 1, "seed": 1}},
     "Missing named input: temperature"),
    ("wrong input name in a row", "POST", PREDICT, {"signature_name": "score", "instances": [{"name": "emma"}]},
     "keys must be equal to: names"),
    ("plain rows for several inputs", "POST", PREDICT, {"signature_name": "generate", "instances": [1]},
     "expecting list of objects"),
    ("string for int32", "POST", PREDICT, generate(count="3"), "is not of expected type: int32"),
    ("fraction for int32", "POST", PREDICT, generate(count=2.5), "is not of expected type: int32"),
    ("bool for int64", "POST", PREDICT, generate(seed=True), "is not of expected type: int64"),
    ("string for float", "POST", PREDICT, generate(temperature="hot"), "is not of expected type: float32"),
    ("numbers for strings", "POST", PREDICT, {"inputs": {"context": [1, 2]}}, "is not of expected type: string"),
    ("list for a single value", "POST", PREDICT, generate(count=[1, 2]), "expected a single value"),
    ("single value for a list", "POST", PREDICT, {"inputs": {"context": "emm"}}, "expected a tensor of rank 1"),
    ("count 0", "POST", PREDICT, generate(count=0), "must be from 1 to 1,000, got 0"),
    ("count negative", "POST", PREDICT, generate(count=-5), "must be from 1 to 1,000, got -5"),
    ("count 10^9", "POST", PREDICT, generate(count=10**9), "must be from 1 to 1,000, got 1,000,000,000"),
    ("count beyond int32", "POST", PREDICT, generate(count=2**40), "out of range for int32"),
    ("max_len over the limit", "POST", PREDICT,
     {"signature_name": "generate_with_options",
      "inputs": {"count": 1, "max_len": 101, "min_len": 1, "prefix": "", "seed": 1, "temperature": 1.0,
                 "top_k": 0, "top_p": 1.0}},
     "input 'max_len' of signature 'generate_with_options' must be from 1 to 100, got 101"),
    ("temperature 0", "POST", PREDICT, generate(temperature=0.0),
     "temperature must be a positive finite number, got 0"),
    ("temperature NaN", "POST", PREDICT,
     b'{"signature_name": "generate", "inputs": {"count": 1, "seed": 1, "temperature": NaN}}',
     "temperature must be a positive finite number, got nan"),
    ("context outside the vocabulary", "POST", PREDICT, {"inputs": {"context": ["zo\u00eb"]}},
     "a context has characters outside the vocabulary"),
    ("prefix outside the vocabulary", "POST", PREDICT,
     {"signature_name": "generate_with_prefix",
      "inputs": {"count": 2, "seed": 1, "temperature": 1.0, "prefix": "\u00eb"}},
     "the prefix has characters outside the vocabulary"),
    ("invalid base64", "POST", PREDICT, {"signature_name": "score", "instances": [{"b64": "***"}]},
     "unable to base64 decode"),
    ("lone surrogate", "POST", PREDICT, b'{"signature_name": "score", "instances": ["em\\ud800"]}',
     "not valid Unicode (a lone surrogate at character 2)"),
    ("lone surrogate in an error", "POST", PREDICT, b'{"signature_name": "\\udc80", "inputs": {}}',
     'Serving signature name: "\udc80" not found'),
    ("integer beyond any float", "POST", PREDICT, generate(temperature=10**400),
     "is out of range for float32"),
    ("integer of 5,000 digits", "POST", PREDICT, b'{"inputs": [' + b"1" * 5000 + b"]}",
     "JSON Parse error: Exceeds the limit (4300 digits) for integer string conversion"),
    ("string over the limit", "POST", PREDICT, {"signature_name": "score", "instances": [LIMIT_STR]},
     f"the limit is {Limits.max_chars}"),
    ("too many values", "POST", PREDICT, {"signature_name": "score", "instances": ["a"] * 1001},
     "the limit is 1,000 per input"),
    ("a body of megabytes", "POST", PREDICT, b'{"inputs": ["' + b"a" * 3_000_000 + b'"]}',
     "request body over 1,048,576 bytes"),
    ("classify", "POST", "/v1/models/kmlp:classify", {"examples": [{"x": 1}]}, "answers :predict"),
    ("version label", "POST", "/v1/models/kmlp/labels/stable:predict", generate(),
     "Unrecognized servable version label: stable"),
    ("GET on predict", "GET", PREDICT, None, "Malformed request: GET /v1/models/kmlp:predict"),
    ("POST on metadata", "POST", "/v1/models/kmlp/metadata", generate(), "Malformed request: POST"),
    ("PUT", "PUT", "/v1/models/kmlp", b"", "Malformed request: PUT"),
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
    status, kind, answer = server.request(method, path, body)
    assert (status, kind) == (400, "application/json"), answer
    assert set(answer) == {"error"} and message in answer["error"], answer
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
    assert server.ok("POST", PREDICT, generate(count=2, seed=9)) == {"outputs": server.lm.sample(2, seed=9)}


def json_values(text):
    """Any JSON value: numbers (NaN and huge integers too), strings of ``text``, lists, objects."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(text, inner, max_size=4), max_leaves=10)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_any_json_body_for_predict_gets_200_or_a_4xx_json_error(server, data):
    """Bodies shaped like predict requests (this model's signature and input names, any values,
    strings with lone surrogates) and arbitrary JSON: an answer or a 4xx JSON error, never a 500."""
    signatures = server.served.signatures
    text = st.text(st.characters(exclude_categories=()), max_size=8)  # surrogates included
    value = json_values(text)
    input_names = sorted({name for sig in signatures.values() for name in sig.inputs})
    named = st.dictionaries(st.sampled_from(input_names) | text, value, max_size=5)
    shaped = st.fixed_dictionaries({}, optional={
        "signature_name": st.sampled_from(sorted(signatures)) | value,
        "inputs": named | value,
        "instances": st.lists(named | value, max_size=3) | value})
    body = data.draw(shaped | value)
    status, kind, answer = server.request("POST", PREDICT, json.dumps(body).encode(), timeout=60)
    assert kind == "application/json", (status, answer)
    assert status == 200 or (400 <= status < 500 and set(answer) == {"error"}), (status, answer)


def test_wrong_model_version_or_path_gets_404(server):
    for method, path, body, message in (
            ("POST", "/v1/models/other:predict", generate(), "Servable not found for request: Latest(other)"),
            ("POST", "/v1/models/kmlp/versions/7:predict", generate(), "Specific(kmlp, 7)"),
            ("GET", "/nothing/here", None, "Not found: /nothing/here"),
            ("POST", "/playground/nothing", {}, "Not found")):
        status, kind, answer = server.request(method, path, body)
        assert (status, kind) == (404, "application/json") and message in answer["error"], answer


def test_headers_over_the_limit_are_refused(server):
    request = b"GET /v1/models/kmlp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 300_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            sock.sendall(request)
            answer = sock.recv(100)
        except ConnectionResetError:  # answered and closed while the rest was still being sent
            answer = b"reset"
    assert answer.startswith(b"HTTP/1.1 400 ") or answer == b"reset", answer
    assert server.ok("GET", "/v1/models/kmlp")["model_version_status"]


def test_the_latest_version_is_served_and_an_incomplete_one_refused(server, tmp_path):
    from kmlp.export import export_run
    from kmlp.runs import RunError, load_run
    from kmlp.serve import ServedModel

    run_dir = tmp_path / "run"
    shutil.copytree(server.run.path, run_dir)
    run = load_run(run_dir)
    assert latest_export(run) == run_dir / "export" / "1"
    assert export_run(run) == run_dir / "export" / "2"
    served = ServedModel(latest_export(run))
    assert served.version == 2 and served.status("kmlp", None, None)["model_version_status"][0]["version"] == "2"
    with pytest.raises(RequestError, match="Could not find version 1 of model kmlp"):
        served.status("kmlp", "1", None)
    (run_dir / "export" / "3").mkdir()  # a version folder with nothing in it
    with pytest.raises(RunError, match="not a SavedModel"):
        latest_export(run)


def test_an_internal_error_is_a_500_with_one_line_and_no_traceback(server, monkeypatch):
    def broken(body):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.served, "predict", broken)
    status, kind, answer = server.request("POST", PREDICT, generate())
    assert (status, kind) == (500, "application/json")
    assert answer == {"error": "internal error; the server's log has the details"}
    monkeypatch.undo()
    assert server.ok("POST", PREDICT, generate(count=1))["outputs"]


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


def test_json_to_tensor_follows_tensorflow_servings_rules():
    import tensorflow as tf

    spec = tf.TensorSpec([None, None], tf.float32)
    assert json_to_tensor([[1, 2.5], [3, 4]], spec, "x", Limits()).numpy().tolist() == [[1, 2.5], [3, 4]]
    with pytest.raises(RequestError, match="lists of unequal sizes"):
        json_to_tensor([[1, 2], [3]], spec, "x", Limits())
    with pytest.raises(RequestError, match="a list where a single value was expected"):
        json_to_tensor([[1, 2], [3, [4]]], spec, "x", Limits())
    names = json_to_tensor([{"b64": "ZW1tYQ=="}, "ava"], tf.TensorSpec([None], tf.string), "x", Limits())
    assert names.numpy().tolist() == [b"emma", b"ava"]


def test_outputs_are_written_as_tensorflow_serving_writes_them():
    floats = np.array([0.1, 1.0, -np.inf, np.nan, 1 / 3], np.float32)
    text = json.dumps(to_json_values(floats, "p"))
    assert text == "[0.1, 1.0, -Infinity, NaN, 0.33333334]"  # fewest digits, the same float32 values
    np.testing.assert_array_equal(np.array(json.loads(text), np.float32), floats)
    assert to_json_values(np.array([b"emma", b"\xff"], object), "names") == ["emma", "\ufffd"]
    assert to_json_values(np.array([b"\xff\x00"], object), "raw_bytes") == [{"b64": "/wA="}]
    assert to_json_values(np.array([[1, 2]], np.int32), "tokens") == [[1, 2]]


def test_tf_error_messages_are_cut_to_what_is_wrong():
    import tensorflow as tf

    asserted = tf.errors.InvalidArgumentError(None, None, (
        "Graph execution error:\n\nDetected at node x defined at (most recent call last):\n<stack traces "
        "unavailable>\nassertion failed: [temperature must be positive.  ] [Condition x > 0 did not hold "
        "element-wise:] [x (temperature:0) = ] [-1]\n\t [[{{node x}}]] [Op:__inference_x_1]"))
    assert tf_error_message(asserted) == "temperature must be positive"
    data = tf.errors.InvalidArgumentError(None, None, "assertion failed: [count must be at most] [1000] "
                                                      "[got] [5000]\n\t [[{{node Assert}}]]")
    assert tf_error_message(data) == "count must be at most 1000 got 5000"
    other = tf.errors.InvalidArgumentError(None, None, "Graph execution error:\n\nDetected at node Fill\n"
                                                       "<stack traces unavailable>\ndims must be a vector"
                                                       "\n\t [[{{node Fill}}]] [Op:x]")
    assert tf_error_message(other) == "dims must be a vector"


# ---------------------------------------------------------------------------------------------
# Idle and slow clients: the connection cap and the timeouts (servers with small limits on the
# module's model; every socket operation has a timeout)


@contextmanager
def limited(server, **limits):
    """Another server of the module's model, with ``Limits(**limits)``; yields its port."""
    small = Limits(**limits)
    with running(build_app(server.served, limits=small), small) as port:
        yield port


@contextmanager
def connections(port: int, count: int = 1):
    """``count`` raw TCP connections to ``port``, opened in turn; all closed on the way out."""
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def ask(port: int) -> tuple[int, object, float]:
    """(status, parsed JSON or text, seconds) of GET /v1/models/kmlp on a fresh connection."""
    started = time.monotonic()
    status, _, answer = Served(port, None, None, None).request("GET", "/v1/models/kmlp", timeout=5)
    return status, answer, time.monotonic() - started


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


def parse_answer(raw: bytes) -> tuple[int, dict]:
    """(status, JSON body) of one HTTP answer the server sent before closing."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), raw[:200]
    return int(head.split(b" ", 2)[1]), json.loads(body)


def closed_among(socks, count: int, within: float) -> set[int]:
    """Indexes of the sockets the server closed: once ``count`` are closed (or ``within`` seconds
    have passed), 0.2 s more to see any other close."""
    closed = set()

    def poll(timeout):
        still_open = [s for i, s in enumerate(socks) if i not in closed]
        for sock in select.select(still_open, [], [], timeout)[0]:
            try:
                data = sock.recv(1)
            except ConnectionResetError:
                data = b""
            if not data:
                closed.add(socks.index(sock))

    deadline = time.monotonic() + within
    while len(closed) < count and time.monotonic() < deadline:
        poll(0.05)
    poll(0.2)
    return closed


def start_request_in_progress(sock, body: bytes) -> None:
    """Send a predict request's headers with ``Expect: 100-continue``, and wait for the 100 Continue:
    the application is then reading the body, the request in progress until the body is sent."""
    sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
    expected, got = b"HTTP/1.1 100 Continue\r\n\r\n", b""
    while len(got) < len(expected):
        chunk = sock.recv(len(expected) - len(got))
        assert chunk, f"closed after {got!r}"
        got += chunk
    assert got == expected


def finish_request(sock, body: bytes) -> tuple[int, dict]:
    """Send the body of a request in progress: (status, JSON) of its answer."""
    sock.sendall(body)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def test_idle_connections_cannot_crowd_out_a_request(server):
    """Three times max_connections connections that send nothing: each new one beyond the cap closes
    the one idle longest, so a client's request is answered at once."""
    with limited(server, max_connections=16) as port, connections(port, 48) as idle:
        status, answer, seconds = ask(port)
        assert status == 200 and answer["model_version_status"] and seconds < 2, (status, answer, seconds)
        # 49 connections, room for 16: the 33 idle longest were closed, the 15 newest kept
        assert closed_among(idle, 33, within=2) == set(range(33))


def test_a_request_in_progress_is_never_closed_for_the_cap(server):
    """Two requests in progress on a server with room for three, then nine idle connections and a
    client: only idle connections make room, and both requests in progress get their answers."""
    body = json.dumps(generate(count=2, seed=9)).encode()
    expected = {"outputs": server.lm.sample(2, seed=9)}
    with limited(server, max_connections=3) as port, connections(port, 2) as busy:
        for sock in busy:
            start_request_in_progress(sock, body)
        with connections(port, 9):
            assert ask(port)[0] == 200
        for sock in busy:
            assert finish_request(sock, body) == (200, expected)


def test_at_the_cap_with_no_idle_connection_a_request_gets_503(server):
    """Every place taken by a request in progress: a request on one more connection gets 503 and the
    connection is closed; the requests in progress get their answers, and then room is made again."""
    body = json.dumps(generate(count=2, seed=9)).encode()
    expected = {"outputs": server.lm.sample(2, seed=9)}
    with limited(server, max_connections=2) as port, connections(port, 2) as busy:
        for sock in busy:
            start_request_in_progress(sock, body)
        with connections(port) as (third,):
            third.sendall(b"GET /v1/models/kmlp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            raw, closed = read_until_closed(third, within=3)
        assert closed is not None, raw
        busy_error = "server busy: 2 connections open and none idle; try again"
        assert parse_answer(raw) == (503, {"error": busy_error})
        for sock in busy:
            assert finish_request(sock, body) == (200, expected)
        assert ask(port)[0] == 200  # both connections now idle: one is closed to make room


def test_a_slow_request_head_gets_408_after_the_head_timeout(server):
    """Headers sent one byte per 0.2 s (14 s for all of them): 408 and closed once head_timeout has
    passed since the request line; other clients are answered meanwhile and after."""
    headers = b"Host: 127.0.0.1\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"
    with limited(server, head_timeout=0.5) as port, connections(port) as (slow,):
        slow.sendall(b"GET /v1/models/kmlp HTTP/1.1\r\n")
        started = time.monotonic()
        for i in range(len(headers)):
            if select.select([slow], [], [], 0.2)[0]:  # answered (or closed)
                break
            try:
                slow.sendall(headers[i:i + 1])
            except OSError:  # closed while the byte was on its way
                break
            if i == 1:
                assert ask(port)[0] == 200
        raw, closed = read_until_closed(slow, within=2)
        assert closed is not None and 0.4 < closed - started < 2, raw
        assert parse_answer(raw) == (408, {"error": "request line and headers not received within 0.5 s"})
        assert ask(port)[0] == 200


SLOW_BODIES = [  # (id, limits, seconds between bytes sent or None, the error, seconds to it)
    ("stalled", {"body_idle_timeout": 0.5}, None, "no bytes of the request body for 0.5 s", 0.5),
    ("dripped", {"body_idle_timeout": 0.5, "body_timeout": 1.0}, 0.2,
     "request body not received within 1 s", 1.0),
]


@pytest.mark.parametrize("limits, drip, message, timeout", [b[1:] for b in SLOW_BODIES],
                         ids=[b[0] for b in SLOW_BODIES])
def test_a_slow_request_body_gets_408(server, limits, drip, message, timeout):
    """1,000 bytes of body declared and 10 sent: stalled there, 408 after body_idle_timeout; dripped
    a byte per 0.2 s (shorter pauses), 408 after body_timeout. The server answers others after."""
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n").encode()
    with limited(server, **limits) as port, connections(port) as (slow,):
        slow.sendall(head + b'{"inputs":')
        started = time.monotonic()
        while drip and time.monotonic() - started < 5 and not select.select([slow], [], [], drip)[0]:
            try:
                slow.sendall(b" ")
            except OSError:
                break
        raw, closed = read_until_closed(slow, within=3)
        assert closed is not None and timeout - 0.1 < closed - started < timeout + 1.5, raw
        assert parse_answer(raw) == (408, {"error": message})
        assert ask(port)[0] == 200


def test_idle_connections_are_closed_after_the_keep_alive_timeout(server):
    """keep_alive_timeout closes a connection idle since its answer, and one that never sent a byte."""
    with limited(server, keep_alive_timeout=0.5) as port:
        opened = time.monotonic()
        with connections(port, 2) as (answered, silent):
            answered.sendall(b"GET /v1/models/kmlp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response = http.client.HTTPResponse(answered)
            response.begin()
            assert response.status == 200 and json.loads(response.read())["model_version_status"]
            answered_at = time.monotonic()
            leftover, closed = read_until_closed(answered, within=3)
            assert leftover == b"" and closed is not None and 0.3 < closed - answered_at < 2
            leftover, closed = read_until_closed(silent, within=3)
            assert leftover == b"" and closed is not None and 0.4 < closed - opened < 2


# ---------------------------------------------------------------------------------------------
# The playground's endpoints


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


def start_cli(run_dir, *flags):
    env = {k: v for k, v in os.environ.items() if k != "KMLP_TF_LOGS"}
    process = subprocess.Popen([sys.executable, "-m", "kmlp", "serve", str(run_dir), "--port", "0", *flags],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 180
    while not lines or "Ctrl-C stops the server" not in lines[-1]:
        line = process.stdout.readline()
        if not line or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"kmlp serve did not start: {''.join(lines)}{process.stderr.read()[-2000:]}")
        lines.append(line)
    port = int(re.search(r"playground:\s+http://127\.0\.0\.1:(\d+)/", "".join(lines)).group(1))
    return process, port, "".join(lines)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_serves_and_stops_cleanly(server, tmp_path, stop):
    run_dir = tmp_path / "run"
    exports = stop == signal.SIGINT  # once from a run without an export, once from one with (the server's)
    shutil.copytree(server.run.path, run_dir, ignore=shutil.ignore_patterns("export") if exports else None)
    process, port, said = start_cli(run_dir)
    try:
        assert (f"exported {run_dir}" in said) == exports and "REST API:" in said
        client = Served(port, None, None, None)
        assert client.ok("GET", "/v1/models/kmlp")["model_version_status"][0]["state"] == "AVAILABLE"
        assert len(client.ok("POST", PREDICT, generate(count=5))["outputs"]) == 5
        process.send_signal(stop)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err[-2000:]
    assert "kmlp serve: stopped" in out and "Traceback" not in err, err[-2000:]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_cli_flag_errors_name_the_flag(tiny, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        for flags, message in ((["--port", "70000"], "--port must be from 0"),
                               (["--port", str(port)], f"--port {port}: already in use"),
                               (["--model-name", "a/b"], "--model-name must be a name"),
                               (["--host", "no-such-host.invalid"], "--host no-such-host.invalid"),
                               (["--data", str(tmp_path / "gone.txt")], "gone.txt: no such file")):
            done = subprocess.run([sys.executable, "-m", "kmlp", "serve", str(tiny.path), "--port", "0", *flags],
                                  cwd=ROOT, capture_output=True, text=True, timeout=180)
            assert done.returncode == 2, (flags, done.stderr[-2000:])
            assert done.stderr.startswith("kmlp: error: ") and message in done.stderr, (flags, done.stderr)
            assert "Traceback" not in done.stderr
        done = subprocess.run([sys.executable, "-m", "kmlp", "serve", str(tmp_path / "nowhere")], cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 2 and "no such run directory" in done.stderr
    finally:
        taken.close()


# ---------------------------------------------------------------------------------------------
# The load benchmark (a smoke test: nothing is timed)


def test_bench_serve_reports_latency_throughput_errors_and_memory(server):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), str(server.run.path),
                           "--clients", "4", "--duration", "2", "--single-seconds", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    out = done.stdout
    print(out)
    assert re.search(r"^one client: [\d,]+ requests in [\d.]+ s, [\d,.]+ requests/s, errors 0$", out, re.M)
    assert re.search(r"^4 clients: [\d,]+ requests in [\d.]+ s, [\d,.]+ requests/s, errors 0$", out, re.M)
    for kind in ("generate 1 name", "generate 100 names", "score 10 names"):
        assert len(re.findall(rf"^  {kind}\s+[\d,]+\s+[\d,.]+\s+[\d.]+\s+[\d.]+$", out, re.M)) == 2, kind
    assert re.search(r"server memory \(RSS\): [\d,.]+ MB before the load, [\d,.]+ MB after", out)
    assert "server stopped by SIGINT: exit status 0" in out


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
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "playground_screenshot.py"),
                           "--url", f"http://127.0.0.1:{server.port}/", "--out", str(shot), "--json",
                           "--count", "8", "--top-k", "5", "--seed", "3", "--name", "emma"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
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
