"""kmlp.serving.served_model: status, metadata and predict over real HTTP, as TensorFlow Serving answers
them, for every signature and in both request formats; requests a signature refuses; TensorFlow's
errors cut to one line."""

from __future__ import annotations

import numpy as np
import pytest
from serving_helpers import PREDICT, assert_refused_then_served, generate

from kmlp.config import MAX_SEED
from kmlp.serving.served_model import tf_error_message

pytest_plugins = ["serving_fixtures"]


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


def test_a_version_in_a_url_is_ascii_digits_for_an_int64_as_in_tensorflow_serving(server):
    """TensorFlow Serving matches versions with RE2's \\d (ASCII digits) and reads them as int64:
    other digits are a malformed request, a longer number cannot be converted (400), a number in
    range is a version, found or not (404)."""
    largest, thousands = 2**63 - 1, "1" * 5000  # an int64; more digits than Python reads by default
    for path, status, message in (
            ("/v1/models/kmlp/versions/%D9%A1", 400, "Malformed request: GET /v1/models/kmlp/versions/\u0661"),
            ("/v1/models/kmlp/versions/%EF%BC%91/metadata", 400, "Malformed request: GET"),  # fullwidth 1
            (f"/v1/models/kmlp/versions/{largest}", 404, f"Could not find version {largest} of model kmlp"),
            (f"/v1/models/kmlp/versions/{largest + 1}", 400,
             f"Failed to convert version: {largest + 1} to numeric."),
            (f"/v1/models/kmlp/versions/{thousands}/metadata", 400, f"Failed to convert version: {thousands} "),
            ("/v1/models/kmlp/versions/0001", 200, None)):
        got = server.request("GET", path)
        assert got[:2] == (status, "application/json"), (path, got)
        assert message is None or got[2]["error"].startswith(message), (path, got)
    for version, status, message in (("%D9%A1", 400, "Malformed request: POST"),
                                     (str(largest), 404, f"Specific(kmlp, {largest})"),
                                     (str(largest + 1), 400, f"Failed to convert version: {largest + 1} "),
                                     (thousands, 400, "Failed to convert version: 1111")):
        got = server.request("POST", f"/v1/models/kmlp/versions/{version}:predict", generate())
        assert got[:2] == (status, "application/json") and message in got[2]["error"], (version, got)


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


# ---------------------------------------------------------------------------------------------
# Requests a signature refuses: 400 with a JSON error, and the server goes on


BAD_REQUESTS = [
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
    ("count 0", "POST", PREDICT, generate(count=0), "must be from 1 to 1,000, got 0"),
    ("count negative", "POST", PREDICT, generate(count=-5), "must be from 1 to 1,000, got -5"),
    ("count 10^9", "POST", PREDICT, generate(count=10**9), "must be from 1 to 1,000, got 1,000,000,000"),
    ("seed negative", "POST", PREDICT, generate(seed=-1), f"seed must be from 0 to {MAX_SEED}, got -1"),
    ("seed the lowest int64", "POST", PREDICT, generate(seed=-2**63),
     f"seed must be from 0 to {MAX_SEED}, got -9223372036854775808"),
    ("seed over the command line's", "POST", PREDICT, generate(seed=MAX_SEED + 1),
     f"seed must be from 0 to {MAX_SEED}, got {MAX_SEED + 1}"),
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
]


@pytest.mark.parametrize("what, method, path, body, message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_400_and_the_next_one_is_answered(server, what, method, path, body, message):
    assert_refused_then_served(server, method, path, body, message)


def test_a_check_in_the_graph_answers_its_whole_message(server):
    """The SavedModel's own message, whole, even with brackets in it (as `top_p must be in (0, 1]`)."""
    options = {"count": 1, "max_len": 10, "min_len": 1, "prefix": "", "seed": 1, "temperature": 1.0,
               "top_k": 0, "top_p": 1.5}
    body = {"signature_name": "generate_with_options", "inputs": options}
    assert server.request("POST", PREDICT, body)[::2] == (400, {"error": "top_p must be in (0, 1], got 1.5"})
    assert server.request("POST", PREDICT, generate(seed=-2))[::2] == (
        400, {"error": f"seed must be from 0 to {MAX_SEED}, got -2"})
    assert server.ok("POST", PREDICT, generate(count=2, seed=MAX_SEED)) == {
        "outputs": server.lm.sample(2, seed=MAX_SEED)}


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
    bracket = tf.errors.InvalidArgumentError(None, None, "assertion failed: [top_p must be in (0, 1], got 2]"
                                                         "\n\t [[{{node Assert}}]] [Op:x]")
    assert tf_error_message(bracket) == "top_p must be in (0, 1], got 2"
