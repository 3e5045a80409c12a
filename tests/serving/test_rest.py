"""kmlp.serving.rest: request bodies and JSON values turned into tensors by TensorFlow Serving's rules
(each mistake a 400 with a one-line JSON error, the server going on), and tensors written as it writes
them."""

from __future__ import annotations

import json
import urllib.parse

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from serving_helpers import LIMIT_STR, PREDICT, assert_refused_then_served, exchange, generate

from kmlp.serving.limits import Limits
from kmlp.serving.rest import RequestError, json_to_tensor, to_json_values

pytest_plugins = ["serving_fixtures"]


# ---------------------------------------------------------------------------------------------
# Bodies and values a server cannot read: 400 with a JSON error, and the server goes on


BAD_REQUESTS = [
    ("malformed JSON", "POST", PREDICT, b'{"inputs": [', "JSON Parse error"),
    ("empty body", "POST", PREDICT, b"", "The document is empty"),
    ("not UTF-8", "POST", PREDICT, b'{"inputs": ["\xff\xfe"]}', "JSON Parse error"),
    ("nested too deeply", "POST", PREDICT, b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("not an object", "POST", PREDICT, b"[1, 2]", "not a JSON object"),
    ("string for int32", "POST", PREDICT, generate(count="3"), "is not of expected type: int32"),
    ("fraction for int32", "POST", PREDICT, generate(count=2.5), "is not of expected type: int32"),
    ("bool for int64", "POST", PREDICT, generate(seed=True), "is not of expected type: int64"),
    ("string for float", "POST", PREDICT, generate(temperature="hot"), "is not of expected type: float32"),
    ("numbers for strings", "POST", PREDICT, {"inputs": {"context": [1, 2]}}, "is not of expected type: string"),
    ("list for a single value", "POST", PREDICT, generate(count=[1, 2]), "expected a single value"),
    ("single value for a list", "POST", PREDICT, {"inputs": {"context": "emm"}}, "expected a tensor of rank 1"),
    ("count beyond int32", "POST", PREDICT, generate(count=2**40), "out of range for int32"),
    ("count beyond int64", "POST", PREDICT, generate(count=2**64), "out of range for int32"),
    ("seed beyond int64", "POST", PREDICT, generate(seed=2**63), "9223372036854775808 is out of range for int64"),
    ("seed below int64", "POST", PREDICT, generate(seed=-2**63 - 1), "is out of range for int64"),
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
]


@pytest.mark.parametrize("what, method, path, body, message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_400_and_the_next_one_is_answered(server, what, method, path, body, message):
    assert_refused_then_served(server, method, path, body, message)


BIG_INTEGERS = st.sampled_from([2**31, -2**31 - 1, 2**32, 2**63, -2**63 - 1, 2**64, 10**400, -10**400])


def json_values(text):
    """Any JSON value: numbers (NaN and huge integers too), strings of ``text``, lists, objects."""
    scalars = st.none() | st.booleans() | st.integers() | BIG_INTEGERS | st.floats() | text
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


def request_heads():
    """Requests on the REST API's paths and others: any method; model names, versions (any digits,
    any length), labels and verbs; a Host header of this machine or not; other headers, odd or large."""
    digits = (st.text(st.characters(categories=["Nd"]), min_size=1, max_size=25)
              | st.integers(0, 10**30).map(str) | st.just("9" * 5000))
    spec = st.just("") | digits.map("/versions/{}".format) | st.text(max_size=8).map("/labels/{}".format)
    rest_path = st.builds("/v1/models/{}{}{}".format, st.sampled_from(["kmlp", "KMLP", "other", ""]), spec,
                          st.sampled_from(["", "/metadata", ":predict", ":classify", "/", "/x"]))
    path = rest_path | st.text(max_size=30).map("/{}".format)
    value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40) | st.integers(0, 30_000).map(
        "a".__mul__)
    header = st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True), value)
    return st.builds(_request, st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]), path,
                     st.sampled_from(["127.0.0.1", "localhost:8501", "[::1]:1", "evil.example", ""]),
                     st.lists(header, max_size=3))


def _request(method: str, path: str, host: str, headers: list) -> bytes:
    lines = [f"{method} {urllib.parse.quote(path, safe='/:')} HTTP/1.1", f"Host: {host}",
             *(f"{name}: {value}" for name, value in headers), "Content-Length: 2", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n{}").encode()


@settings(max_examples=60, deadline=None)
@given(request=request_heads())
def test_any_request_head_gets_200_or_a_4xx_json_error(server, request):
    """Whatever the method, path, version, Host and other headers: an answer or a 4xx JSON error in
    TensorFlow Serving's form (headers only, for a HEAD request the server could read: a head over
    the limit is refused unread), never a 500, a plain-text error or a traceback."""
    status, headers, body = exchange(server.port, request)
    assert status == 200 or 400 <= status < 500, (status, body[:300])
    if status != 200:
        assert headers["content-type"] == "application/json", (status, headers, body[:300])
        if request.startswith(b"HEAD ") and request.index(b"\r\n\r\n") + 4 <= Limits.max_header_bytes:
            assert body == b""
        else:
            answer = json.loads(body)
            assert set(answer) == {"error"} and "Traceback" not in answer["error"], answer


# ---------------------------------------------------------------------------------------------
# JSON <-> tensors


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
