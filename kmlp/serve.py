"""Serving over HTTP: TensorFlow Serving's REST API on a run's SavedModel, and a playground page.

    kmlp serve DIR [--host 127.0.0.1] [--port 8501]

    GET  /v1/models/kmlp                          status of the version served
    GET  /v1/models/kmlp[/versions/N]/metadata    its signatures, with their inputs and outputs
    POST /v1/models/kmlp[/versions/N]:predict     {"signature_name": ..., "instances" or "inputs": ...}
    GET  /                                        the playground page (files in kmlp/playground/)

The REST API takes and answers what TensorFlow Serving's does (same paths, bodies, status codes and
``{"error": ...}``), so a client written against ``kmlp serve`` works unchanged against
``tensorflow_model_server --rest_api_port=8501 --model_name=kmlp --model_base_path=DIR/export``.
Predictions come from the SavedModel's own signatures, loaded with ``tf.saved_model.load``; which
signatures there are, and the names, dtypes and shapes of their inputs and outputs, are read from
the SavedModel, never assumed. The playground runs kmlp's Python API on the run's Keras model (the
functions the SavedModel is exported from), so it has every control of ``kmlp sample``.

Every request is bounded by :class:`Limits`; a bad one gets status 400 and ``{"error": "..."}`` (one
line, never a traceback), and the next request is answered as usual. Connections are bounded too:
idle ones are closed after a timeout, and the longest-idle first when too many are open; a request
arriving too slowly gets 408 (docs/serving-limits.md lists them all). The web stack is Starlette on
uvicorn; model calls run on a small pool of threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import heapq
import ipaddress
import itertools
import json
import logging
import math
import re
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import h11
import numpy as np
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from .config import ConfigError, check_seed

PLAYGROUND_DIR = Path(__file__).resolve().parent / "playground"
MODEL_NAME = "kmlp"
DEFAULT_PORT = 8501  # TensorFlow Serving's REST port
log = logging.getLogger("kmlp.serve")
say = functools.partial(print, flush=True)  # status lines reach a pipe or a log file at once


@dataclass(frozen=True)
class Limits:
    """Everything ``kmlp serve`` bounds, in one place. A request beyond a bound gets status 400 with
    a message naming it; more work than ``max_pending``, or a request when ``max_connections`` are
    open and none is idle, gets 503 (try again); a request line, headers or body arriving too slowly
    gets 408. Timeouts are in seconds."""

    max_body_bytes: int = 1 << 20   # one request body, 1 MiB of JSON
    max_header_bytes: int = 16_384  # request line and headers held while they arrive
    max_items: int = 1_000          # values in one input: names to score, contexts, ...
    max_chars: int = 100            # characters in one string value: a name, context or prefix
    max_count: int = 1_000          # names per generate call (an input named `count`)
    max_len: int = 100              # characters generated per name (an input named `max_len`)
    max_workers: int = 2            # model calls running at once, each on its own thread
    max_pending: int = 64           # requests running or waiting for a thread
    max_connections: int = 512      # open connections: a new one beyond closes the longest-idle one
    keep_alive_timeout: float = 5.0  # a connection with no request, since it opened or its last answer
    head_timeout: float = 10.0       # a request line and headers, from their first byte to their end
    body_idle_timeout: float = 10.0  # a pause in a request body: no new bytes of it for this long
    body_timeout: float = 60.0       # a whole request body, from the end of the headers

    def bounds(self) -> dict[str, tuple[int, int]]:
        """Inputs bounded by name, in any signature that has them: name -> (lowest, highest)."""
        return {"count": (1, self.max_count), "max_len": (1, self.max_len)}


class RequestError(Exception):
    """A request that cannot be answered: ``status`` is the HTTP status, the message one line."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# JSON <-> tensors, by TensorFlow Serving's rules (tensorflow_serving/util/json_tensor.cc)


def _dense_shape(value) -> list[int]:
    """The shape a nested list claims, read along its first elements (as TensorFlow Serving does)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _flatten(value, shape, where: str, out: list) -> None:
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if level == len(shape):
            if isinstance(item, list):
                raise RequestError(f"{where}: a list where a single value was expected "
                                   f"(the lists are not of shape {shape})")
            out.append(item)
        elif not isinstance(item, list) or len(item) != shape[level]:
            raise RequestError(f"{where}: lists of unequal sizes; expected shape {shape} "
                               f"(every list at depth {level + 1} of size {shape[level]})")
        else:
            stack.extend((x, level + 1) for x in reversed(item))


def _leaf(value, dtype, where: str, limits: Limits):
    """One JSON value as a value of ``dtype`` (a tf.DType), or :class:`RequestError`."""
    if dtype.name == "string":
        if _is_b64(value):
            try:
                data = base64.b64decode(value["b64"], validate=True)
            except binascii.Error:
                raise RequestError(f"{where}: unable to base64 decode {value['b64'][:40]!r}") from None
            text = data.decode("utf-8", "replace")
        elif isinstance(value, str):
            try:
                text, data = value, value.encode("utf-8")
            except UnicodeEncodeError as e:  # JSON can spell a lone surrogate, "\ud800"
                raise RequestError(f"{where}: not valid Unicode (a lone surrogate at character "
                                   f"{e.start})") from None
        else:
            raise _type_error(value, dtype, where)
        if len(text) > limits.max_chars:
            raise RequestError(f"{where}: a string of {len(text):,} characters; the limit is "
                               f"{limits.max_chars:,}")
        return data
    if isinstance(value, bool):
        if dtype.is_bool:
            return value
    elif dtype.is_integer and isinstance(value, int):
        if dtype.min <= value <= dtype.max:
            return value
        raise RequestError(f"{where}: {value} is out of range for {dtype.name}")
    elif dtype.is_floating and isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            raise RequestError(f"{where}: {_shown(value)} is out of range for {dtype.name}") from None
    if not (dtype.is_bool or dtype.is_integer or dtype.is_floating):
        raise RequestError(f"{where}: inputs of type {dtype.name} are not supported")
    raise _type_error(value, dtype, where)


def _type_error(value, dtype, where: str) -> RequestError:
    return RequestError(f"{where}: {_shown(value)} is not of expected type: {dtype.name}")


def _shown(value) -> str:
    """A JSON value as an error message shows it: at most 60 characters."""
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def json_to_tensor(value, spec, where: str, limits: Limits):
    """A JSON value (nested lists of values) as a tensor for ``spec`` (a tf.TensorSpec).

    The rules are TensorFlow Serving's (numbers for numeric types, integers for integer types,
    strings or ``{"b64": ...}`` for strings, rectangular lists), and the shape must fit the spec.
    """
    import tensorflow as tf

    shape = _dense_shape(value)
    if spec.shape.rank is not None and len(shape) != spec.shape.rank:
        expected = "a single value" if spec.shape.rank == 0 else f"a tensor of rank {spec.shape.rank}"
        raise RequestError(f"{where}: expected {expected} (shape {_shape_text(spec.shape)}), "
                           f"got shape {shape}")
    size = math.prod(shape)
    if size > limits.max_items:
        raise RequestError(f"{where}: {size:,} values; the limit is {limits.max_items:,} per input")
    flat = []
    _flatten(value, shape, where, flat)
    if not spec.shape.is_compatible_with(shape):
        raise RequestError(f"{where}: expected shape {_shape_text(spec.shape)}, got {shape}")
    values = [_leaf(v, spec.dtype, where, limits) for v in flat]
    array = np.array(values, dtype=object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype)
    return tf.constant(array.reshape(shape), dtype=spec.dtype)


def _shape_text(shape) -> str:
    return "unknown" if shape.rank is None else "[" + ", ".join(
        "None" if d is None else str(d) for d in shape.as_list()) + "]"


def to_json_values(array: np.ndarray, name: str):
    """A tensor's values as JSON-ready nested lists, written as TensorFlow Serving writes them:
    float32 with the fewest digits that read back as the same float32 (NaN and +/-Infinity as
    tokens), strings as text, or as ``{"b64": ...}`` when the output's name ends in ``_bytes``."""
    if array.dtype.kind == "f":
        return array.astype(str).astype(np.float64).tolist()
    if array.dtype.kind in "OSU":
        if name.endswith("_bytes"):
            encode = lambda b: {"b64": base64.b64encode(b).decode("ascii")}  # noqa: E731
        else:
            encode = lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b  # noqa: E731
        return np.frompyfunc(encode, 1, 1)(array).tolist() if array.ndim else encode(array.item())
    return array.tolist()


def dumps(obj) -> bytes:
    """JSON as TensorFlow Serving writes it (NaN and Infinity as bare tokens), UTF-8. A lone
    surrogate (from a request's text, quoted in an error) has no UTF-8: it is written as JSON's
    own escape for it, ``\\udc80``, which ``backslashreplace`` spells alike."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


def parse_json(body: bytes):
    """A request body as a JSON object, or :class:`RequestError` saying why it is not one."""
    if not body.strip():
        raise RequestError("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as e:
        raise RequestError(f"JSON Parse error: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise RequestError(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    except RecursionError:
        raise RequestError("JSON Parse error: nested too deeply") from None
    except ValueError as e:  # Python's bound on the digits of an integer; the rest of its text names sys
        raise RequestError(f"JSON Parse error: {str(e).split(':')[0]}") from None
    if not isinstance(doc, dict):
        raise RequestError("JSON Value: the request body is not a JSON object")
    return doc


# ---------------------------------------------------------------------------------------------
# The SavedModel, answered as TensorFlow Serving answers it


@dataclass
class Signature:
    """One signature of the SavedModel: its function and, read from it, its inputs and outputs."""

    name: str
    function: object                 # a ConcreteFunction taking keyword tensors
    inputs: dict                      # input name -> tf.TensorSpec
    outputs: dict                     # output name -> tf.TensorSpec


# TensorFlow's error codes as TensorFlow Serving turns them into HTTP statuses (http_server.cc).
_HTTP_STATUS = {1: 499, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400,
                12: 501, 14: 503, 16: 401}
_ROW_HINT = ("; the row format ('instances') stacks instances along a new first dimension, so "
             "a signature whose inputs are single values takes the columnar format ('inputs')")


class ServedModel:
    """One version of a SavedModel, loaded with ``tf.saved_model.load``, answering TensorFlow
    Serving's status, metadata and predict requests.

    >>> served = ServedModel("saved_models/fast/export/1")
    >>> served.predict({"signature_name": "generate",
    ...                 "inputs": {"count": 3, "seed": 7, "temperature": 1.0}})
    {'outputs': ['...', '...', '...']}
    """

    def __init__(self, path, name: str = MODEL_NAME, limits: Limits = Limits()):
        import tensorflow as tf

        self.path, self.name, self.limits = Path(path), name, limits
        self.version = int(self.path.name)
        self._loaded = tf.saved_model.load(str(self.path))  # keeps the functions' variables alive
        self.signatures = {
            key: Signature(key, fn, dict(fn.structured_input_signature[1]), dict(fn.structured_outputs))
            for key, fn in self._loaded.signatures.items()}
        self.signature_defs = read_signature_defs(self.path)

    # -- status and metadata --------------------------------------------------------------------

    def status(self, name: str, version: str | None, label: str | None) -> dict:
        if label is not None:
            raise RequestError(f"Unrecognized servable version label: {label}")
        if name != self.name:
            raise RequestError(f"Could not find any versions of model {name}", 404)
        if version is not None and int(version) != self.version:
            raise RequestError(f"Could not find version {version} of model {name}", 404)
        return {"model_version_status": [{"version": str(self.version), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata(self, name: str, version: str | None, label: str | None) -> dict:
        self.check_spec(name, version, label)
        return {"model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
                "metadata": {"signature_def": {"signature_def": self.signature_defs}}}

    def check_spec(self, name: str, version: str | None, label: str | None) -> None:
        """:class:`RequestError` unless the URL names this model (and this version, if one)."""
        if label is not None:
            raise RequestError(f"Unrecognized servable version label: {label}")
        if name != self.name or (version is not None and int(version) != self.version):
            wanted = f"Latest({name})" if version is None else f"Specific({name}, {int(version)})"
            raise RequestError(f"Servable not found for request: {wanted}", 404)

    # -- predict --------------------------------------------------------------------------------

    def predict(self, body: dict) -> dict:
        """Answer a predict request body (a parsed JSON object) as TensorFlow Serving would."""
        signature = self.signature(body.get("signature_name", ""))
        if "instances" in body and "inputs" in body:
            raise RequestError("JSON Value: expecting only one of 'inputs' or 'instances' keys to exist")
        if "instances" in body:
            tensors = self.row_inputs(signature, body["instances"])
        elif "inputs" in body:
            tensors = self.columnar_inputs(signature, body["inputs"])
        else:
            raise RequestError("Missing 'inputs' or 'instances' key")
        self.check_bounds(signature, tensors)
        outputs = self.run(signature, tensors)
        if "instances" in body:
            return {"predictions": row_outputs(outputs)}
        if len(outputs) == 1:
            (name, value), = outputs.items()
            return {"outputs": to_json_values(value, name)}
        return {"outputs": {name: to_json_values(value, name) for name, value in sorted(outputs.items())}}

    def signature(self, name) -> Signature:
        if not isinstance(name, str):
            raise RequestError("JSON Value: not formatted correctly. 'signature_name' key must be a "
                               "string value.")
        key = name or "serving_default"
        if key in self.signatures:
            return self.signatures[key]
        if key in self.signature_defs:  # e.g. __saved_model_init_op: no inputs to feed
            raise RequestError(f"Failed to get input map for signature: {key}")
        raise RequestError(f'Serving signature name: "{key}" not found in signature def '
                           f"(this model has {', '.join(sorted(self.signatures))})")

    def row_inputs(self, signature: Signature, instances) -> dict:
        """Tensors from the row format: one instance per list item, stacked along a new first axis."""
        if not isinstance(instances, list):
            raise RequestError("JSON Value: expecting 'instances' to be an list/array")
        if not instances:
            raise RequestError("JSON Value: no values in 'instances' array")
        names = sorted(signature.inputs)
        if _is_named(instances[0]):
            for i, item in enumerate(instances):
                if not _is_named(item):
                    raise RequestError(f"Expecting object but got list at item {i} of input list")
                if set(item) != set(names):
                    unknown = sorted(set(item) - set(names))
                    raise RequestError(f"Failed to process element: {i} of 'instances' list: "
                                       + (f"unknown input {unknown[0]!r}; " if unknown else "")
                                       + f"keys must be equal to: {','.join(names)}")
            columns = {name: [item[name] for item in instances] for name in names}
        elif len(names) > 1:
            raise RequestError("instances is a plain list, but expecting list of objects as multiple "
                               f"input tensors required as per tensorinfo_map ({', '.join(names)})")
        else:
            if any(_is_named(item) for item in instances):
                raise RequestError("Expecting value/list but got object in the input list")
            columns = {names[0]: instances}
        return {name: self._tensor(signature, name, columns[name], row=True) for name in names}

    def columnar_inputs(self, signature: Signature, inputs) -> dict:
        """Tensors from the columnar format: one value (or nested list) per named input."""
        names = sorted(signature.inputs)
        if not _is_named(inputs):
            if len(names) > 1:
                raise RequestError("inputs is a plain value/list, but expecting an object as multiple "
                                   f"input tensors required as per tensorinfo_map ({', '.join(names)})")
            return {names[0]: self._tensor(signature, names[0], inputs, row=False)}
        for name in names:
            if name not in inputs:
                raise RequestError(f"Missing named input: {name} in 'inputs' object.")
        unknown = sorted(set(inputs) - set(names))
        if unknown:  # TensorFlow Serving ignores them; a misspelt optional input should not vanish
            raise RequestError(f"unknown input {unknown[0]!r} in 'inputs' object; signature "
                               f"'{signature.name}' takes {', '.join(names)}")
        return {name: self._tensor(signature, name, inputs[name], row=False) for name in names}

    def _tensor(self, signature: Signature, name: str, value, row: bool):
        where = f"input '{name}' of signature '{signature.name}'"
        try:
            return json_to_tensor(value, signature.inputs[name], where, self.limits)
        except RequestError as e:
            if row and signature.inputs[name].shape.rank == 0:
                raise RequestError(str(e) + _ROW_HINT) from None
            raise

    def check_bounds(self, signature: Signature, tensors: dict) -> None:
        for name, (low, high) in self.limits.bounds().items():
            if name in tensors and signature.inputs[name].dtype.is_integer:
                values = np.asarray(tensors[name]).ravel()
                bad = values[(values < low) | (values > high)]
                if bad.size:
                    raise RequestError(f"input '{name}' of signature '{signature.name}' must be from "
                                       f"{low:,} to {high:,}, got {int(bad[0]):,}")

    def run(self, signature: Signature, tensors: dict) -> dict:
        """The signature's outputs as numpy arrays; TensorFlow's errors become :class:`RequestError`."""
        import tensorflow as tf

        try:
            outputs = signature.function(**tensors)
        except tf.errors.OpError as e:
            raise RequestError(tf_error_message(e), _HTTP_STATUS.get(e.error_code, 500)) from None
        return {name: value.numpy() for name, value in outputs.items()}


def _is_b64(value) -> bool:
    """A binary string as TensorFlow Serving writes one: ``{"b64": "<base64>"}``."""
    return isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)


def _is_named(value) -> bool:
    """A JSON object of named inputs (not a ``{"b64": ...}`` value)."""
    return isinstance(value, dict) and not _is_b64(value)


def row_outputs(outputs: dict) -> list:
    """``predictions`` of the row format: one item per instance; every output needs the same first
    dimension (TensorFlow Serving's rule, so outputs such as a vocabulary refuse this format)."""
    sizes = {name: (value.shape[0] if value.ndim else None) for name, value in outputs.items()}
    batch = None
    for name, size in sorted(sizes.items()):
        if size is None:
            raise RequestError(f"Tensor name: {name} has no shape information; use the columnar "
                               f"format ('inputs')")
        if batch is not None and size != batch:
            raise RequestError(f"Tensor name: {name} has inconsistent batch size: {size} expecting: "
                               f"{batch}; use the columnar format ('inputs') for this signature")
        batch = size
    columns = {name: to_json_values(value, name) for name, value in outputs.items()}
    if len(columns) == 1:
        return next(iter(columns.values()))
    return [{name: columns[name][i] for name in sorted(columns)} for i in range(batch)]


def tf_error_message(error) -> str:
    """The line of a TensorFlow op error that says what is wrong: the message given to a failed
    ``tf.debugging.assert_*`` (or an ``Assert``'s data), else the error's own first line."""
    text = error.message
    failed = re.search(r"assertion failed: (.*)", text)
    if failed:
        parts = [p.strip() for p in re.findall(r"\[([^\[\]]*)\]", failed.group(1))]
        if any(p.startswith("Condition ") for p in parts):  # assert_*: the rest is tensor dumps
            parts = parts[:1]
        return " ".join(p for p in parts if p).rstrip(". ") or "assertion failed"
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(
        ("Graph execution error", "Detected at node", "<stack traces"))]
    first = lines[0] if lines else type(error).__name__
    return re.sub(r"\s*\[\[\{\{node .*$", "", first).strip()


def read_signature_defs(export_path) -> dict:
    """The SavedModel's SignatureDefs as JSON, as TensorFlow Serving prints them in its metadata."""
    from google.protobuf.json_format import MessageToDict
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(export_path) / "saved_model.pb").read_bytes())
    graph = next(g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags)
    return {name: MessageToDict(sig, preserving_proto_field_name=True,
                                always_print_fields_with_no_presence=True)
            for name, sig in graph.signature_def.items()}


# ---------------------------------------------------------------------------------------------
# The playground's model: kmlp's Python API on the run's Keras model


class Playground:
    """What the playground page shows: names from kmlp's sampler with the run's train / dev / test
    marks, the probability of every next character of a typed name, the embedding in 2-D."""

    DEFAULTS = {"count": 10, "temperature": 1.0, "top_k": 0, "prefix": "", "seed": 42}

    def __init__(self, run, served: ServedModel, data_path=None, limits: Limits = Limits()):
        import keras

        from .plots import project_2d
        from .sample import MAX_LEN, NameModel

        self.run, self.limits = run, limits
        self.lm = NameModel(run.model, run.vocab)
        self.splits, self.marks_unavailable = run.splits(data_path)
        table = keras.ops.convert_to_numpy(run.model.get_layer("embedding").embeddings)
        points, xlabel, ylabel = project_2d(table)
        self.default_max_len = min(MAX_LEN, limits.max_len)
        self.info = {
            "model": served.name, "version": served.version, "export": str(served.path),
            "run": str(run.path), "dev_loss": run.metrics.get("dev_loss"),
            "params": int(run.model.count_params()), "block_size": self.lm.block_size,
            "tokens": [run.vocab.token(i) for i in range(len(run.vocab))],
            "embedding": {"points": np.round(points, 5).tolist(), "xlabel": xlabel, "ylabel": ylabel,
                          "dims": int(table.shape[1])},
            "marks_unavailable": self.marks_unavailable,
            "defaults": {**self.DEFAULTS, "max_len": self.default_max_len},
            "limits": asdict(limits), "signatures": sorted(served.signatures),
        }
        self.generate({"count": 1})  # traces the sampler now, not on the first visitor's click
        self.inspect({"text": ""})

    def generate(self, body: dict) -> dict:
        """Names sampled as ``kmlp sample`` samples them, each with where it was found."""
        from .sample import where_found

        _known_fields(body, [*self.DEFAULTS, "max_len"])
        p = {**self.DEFAULTS, "max_len": self.default_max_len, **body}
        count = _int_field(p, "count", 1, self.limits.max_count)
        top_k = _int_field(p, "top_k", 0, len(self.run.vocab))
        max_len = _int_field(p, "max_len", 1, self.limits.max_len)
        prefix = self._text(p, "prefix", "prefix")
        try:  # the sampler's own checks (kmlp.drawing.Sampling) for the rest
            names = self.lm.sample(count, seed=check_seed(p["seed"], "seed"), temperature=p["temperature"],
                                   top_k=top_k, prefix=prefix, max_len=max_len)
        except ConfigError as e:
            raise RequestError(str(e).removeprefix("--")) from None
        marks = where_found(names, self.splits) if self.splits else [None] * len(names)
        return {"names": [{"name": n, "found_in": m} for n, m in zip(names, marks)], "seed": p["seed"],
                "new": sum(m == "new" for m in marks) if self.splits else None,
                "marks_unavailable": self.marks_unavailable}

    def inspect(self, body: dict) -> dict:
        """For each character of a name and its end: the context the model saw, the probability of
        every token next, and the one that came; with the name's log-likelihood."""
        import tensorflow as tf

        from .sample import where_found

        _known_fields(body, ["text"])
        text = self._text(body, "text", "name")
        contexts = [text[:i] for i in range(len(text) + 1)]
        ids = self.lm.context_ids(tf.constant(contexts))
        probs = self.lm.next_probs(ids).numpy()
        vocab = self.run.vocab
        targets = [vocab.stoi[c] for c in text] + [0]
        (total, tokens), = self.lm.score([text])
        rows = [{"context": "".join(vocab.token(int(i)) for i in row), "next": vocab.token(t),
                 "p": to_json_values(probs[k, t:t + 1], "p")[0], "probs": to_json_values(probs[k], "p")}
                for k, (row, t) in enumerate(zip(ids.numpy(), targets))]
        return {"text": text, "rows": rows, "log_likelihood": total, "per_char": total / tokens,
                "found_in": where_found([text], self.splits)[0] if self.splits else None}

    def _text(self, body: dict, key: str, what: str) -> str:
        text = body.get(key, "")
        if not isinstance(text, str):
            raise RequestError(f"{key} must be a string, got {json.dumps(text)[:40]}")
        if len(text) > self.limits.max_chars:
            raise RequestError(f"{key}: {len(text):,} characters; the limit is {self.limits.max_chars:,}")
        missing = self.run.vocab.unknown(text)
        if missing:
            raise RequestError(f"{what} {text!r} has characters outside the model's vocabulary: "
                               f"{''.join(missing)!r} (it knows {''.join(self.run.vocab.chars)!r})")
        return text


def _known_fields(body: dict, known) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; expected {', '.join(known)}")


def _int_field(body: dict, key: str, low: int, high: int) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{key} must be an integer from {low:,} to {high:,}, got {json.dumps(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# The web application


PREDICT_PATH = re.compile(  # TensorFlow Serving's own patterns (http_rest_api_util.cc)
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
MODEL_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; style-src 'self'; img-src 'self' data:",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class Work:
    """Runs model calls on ``max_workers`` threads, with at most ``max_pending`` requests in flight."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.pool = ThreadPoolExecutor(limits.max_workers, thread_name_prefix="kmlp-serve")
        self.pending = 0

    async def __call__(self, fn, *args):
        if self.pending >= self.limits.max_pending:
            raise RequestError(f"server busy: {self.pending} requests in progress; try again", 503)
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.pending -= 1


async def read_body(request, limits: Limits) -> bytes:
    """The request body, or :class:`RequestError` once it passes ``limits.max_body_bytes``. An
    oversized body is still read (up to 16 times the limit) so the client gets the answer."""
    too_big = RequestError(f"request body over {limits.max_body_bytes:,} bytes (the limit)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes \
            and (request.headers.get("expect", "").lower() == "100-continue"
                 or int(declared) > 16 * limits.max_body_bytes):
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limits.max_body_bytes:
            chunks.append(chunk)
        elif size > 16 * limits.max_body_bytes:
            break
    if size > limits.max_body_bytes:
        raise too_big
    return b"".join(chunks)


def build_app(served: ServedModel, playground: Playground | None = None, limits: Limits = Limits(),
              allowed_hosts=None):
    """The ASGI application: TensorFlow Serving's REST API on ``served`` and, with a ``playground``,
    the page at ``/``. ``allowed_hosts`` (Host headers accepted) guards a local server against DNS
    rebinding; None accepts any."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import ClientDisconnect
    from starlette.responses import FileResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    work = Work(limits)

    def json_response(obj, status: int = 200) -> Response:
        return Response(obj if isinstance(obj, bytes) else dumps(obj), status_code=status,
                        media_type="application/json")

    def answering(handler):
        """Wrap an endpoint: a RequestError becomes its JSON error; anything else a 500 with a
        one-line body (the traceback goes to the server's log, never to the client)."""
        async def endpoint(request):
            try:
                return await handler(request)
            except RequestError as e:
                return json_response({"error": str(e)}, e.status)
            except ClientDisconnect:  # gone, or timed out by its connection: nobody listens
                return json_response({"error": "client disconnected"}, 499)
            except Exception:
                log.exception("error answering %s %s", request.method, request.url.path)
                return json_response({"error": "internal error; the server's log has the details"}, 500)
        return endpoint

    async def rest(request):
        method, path = request.method, request.url.path
        predict = PREDICT_PATH.fullmatch(path) if method == "POST" else None
        model = MODEL_PATH.fullmatch(path) if method == "GET" else None
        if predict:
            name, version, label, verb = predict.groups()
            served.check_spec(name, version, label)
            if verb.lower() != "predict":
                raise RequestError(f"kmlp serve answers :predict; this model's signatures are all "
                                   f"predict signatures, so :{verb.lower()} has nothing to run")
            body = await read_body(request, limits)
            return json_response(await work(lambda: dumps(served.predict(parse_json(body)))))
        if model:
            name, version, label, metadata = model.groups()
            if not name:
                raise RequestError("Missing model name in request.")
            answer = served.metadata if metadata else served.status
            return json_response(answer(name, version, label))
        if path.lower().startswith("/v1/"):
            raise RequestError(f"Malformed request: {method} {path}")
        raise RequestError(f"Not found: {path}", 404)

    async def page(request):
        if playground is None:
            raise RequestError("this server has no playground", 404)
        return FileResponse(PLAYGROUND_DIR / "index.html", headers=PAGE_HEADERS)

    async def playground_api(request):
        what = request.path_params["what"]
        if playground is None or what not in ("info", "generate", "inspect"):
            raise RequestError(f"Not found: {request.url.path}", 404)
        if what == "info":
            return json_response(playground.info)
        if request.method != "POST":
            raise RequestError(f"{request.url.path} takes POST", 405)
        body = parse_json(await read_body(request, limits))
        return json_response(await work(getattr(playground, what), body))

    every = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    routes = [Route("/", answering(page)),
              Route("/playground/{what}", answering(playground_api), methods=["GET", "POST"]),
              Mount("/static", StaticFiles(directory=PLAYGROUND_DIR), name="static"),
              Route("/{path:path}", answering(rest), methods=every)]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))] \
        if allowed_hosts else []
    app = Starlette(routes=routes, middleware=middleware)
    app.state.work = work
    return app


# ---------------------------------------------------------------------------------------------
# Connections: uvicorn's HTTP/1.1 protocol, bounded in time and number


_became_idle = itertools.count()  # the order in which connections became idle: the cap closes the lowest


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 connection, with every phase of a request bounded in time and the number of
    open connections bounded without letting idle ones crowd out requests.

    uvicorn times a connection out only while it is idle after an answer (``timeout_keep_alive``):
    one that never sends a byte, or sends its headers or body slowly, stays open for ever; and its
    ``limit_concurrency`` counts idle connections, so enough of them make it refuse every request.
    Here the connection's phase decides its one timer:

    - idle (nothing received since it opened or since its last answer): closed after
      ``keep_alive_timeout``, by uvicorn's own keep-alive timer;
    - head (part of a request line and headers received): 408 once ``head_timeout`` has passed
      since its first byte;
    - body (headers received, body incomplete): 408 after ``body_idle_timeout`` without a byte of
      it, or ``body_timeout`` after the headers;
    - busy (the application has the whole request, or is answering it): no timer.

    When a connection opens beyond ``max_connections``, the longest-idle ones are closed; a request
    that arrives while the server is still over the cap, with no idle connection left to close,
    gets 503. A request in progress is never closed for the cap.
    """

    def __init__(self, *args, limits: Limits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.became_idle = next(_became_idle)
        self.phase = ""             # the phase the timers were last set for
        self.phase_started = 0.0    # loop.time() when it began
        self.phase_timer: asyncio.TimerHandle | None = None
        self.application, self.app = self.app, self.answer_within_cap

    # -- uvicorn's events: each may change the phase -------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.close_idle_beyond_cap()
        self.set_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.set_timer()

    def on_response_complete(self) -> None:
        self.became_idle = next(_became_idle)
        super().on_response_complete()
        self.set_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_phase_timer()
        super().connection_lost(exc)

    # -- timeouts -------------------------------------------------------------------------------

    def current_phase(self) -> str:
        """"idle", "head", "body", "busy" or "closed" (see the class's docstring)."""
        if self.transport.is_closing():
            return "closed"
        if self.conn.their_state is h11.SEND_BODY:  # even when answered early: the rest must come
            return "body"
        if self.cycle is not None and not self.cycle.response_complete:
            return "busy"
        if self.conn.their_state is h11.IDLE:
            return "head" if self.conn.trailing_data[0] else "idle"
        return "busy"  # a request whole and answered, the next not yet begun: uvicorn moves on at once

    def set_timer(self) -> None:
        """Arm the one timer that bounds the current phase. In the body phase each call (a new piece
        of the body) restarts the pause; the head's and the body's totals run from their start."""
        phase, now = self.current_phase(), self.loop.time()
        if phase != self.phase:
            self.phase, self.phase_started = phase, now
        self.cancel_phase_timer()
        if phase == "idle":
            if self.timeout_keep_alive_task is None:  # uvicorn arms it only after an answer
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                    self.timeout_keep_alive_handler)
            return
        self.cancel_keep_alive_timer()
        limits = self.limits
        if phase == "head":
            delay = self.phase_started + limits.head_timeout - now
            why = f"request line and headers not received within {limits.head_timeout:g} s"
        elif phase == "body":
            delay = self.phase_started + limits.body_timeout - now
            why = f"request body not received within {limits.body_timeout:g} s"
            if limits.body_idle_timeout < delay:
                delay = limits.body_idle_timeout
                why = f"no bytes of the request body for {limits.body_idle_timeout:g} s"
        else:
            return
        self.phase_timer = self.loop.call_later(max(delay, 0.0), self.timed_out, why)

    def timed_out(self, why: str) -> None:
        self.phase_timer = None
        if self.phase == "body" and self.flow.read_paused:  # the server stopped reading, not the client
            self.set_timer()
            return
        self.answer_and_close(408, why)

    def cancel_phase_timer(self) -> None:
        if self.phase_timer is not None:
            self.phase_timer.cancel()
            self.phase_timer = None

    def cancel_keep_alive_timer(self) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def answer_and_close(self, status: int, message: str) -> None:
        """Answer ``{"error": message}`` with ``status``, unless an answer has begun, and close. An
        application still reading the request sees the client gone, and its answer goes nowhere."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = dumps({"error": message})
            response = h11.Response(status_code=status, headers=_json_headers(body),
                                    reason=STATUS_PHRASES[status])
            for event in (response, h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        self.transport.close()

    # -- the cap on open connections ------------------------------------------------------------

    def close_idle_beyond_cap(self) -> bool:
        """Close the longest-idle connections while more than ``max_connections`` are open; True if
        the server is still over the cap (no other connection is idle)."""
        cap = self.limits.max_connections
        if len(self.connections) <= cap:  # the set also holds connections closing: an upper bound
            return False
        open_ = [c for c in self.connections if isinstance(c, BoundedH11Protocol)
                 and not c.transport.is_closing()]
        excess = len(open_) - cap
        if excess <= 0:
            return False
        idle = [c for c in open_ if c is not self and c.current_phase() == "idle"]
        for connection in heapq.nsmallest(excess, idle, key=lambda c: c.became_idle):
            connection.timeout_keep_alive_handler()  # closed as uvicorn closes an idle connection
        return excess > len(idle)

    async def answer_within_cap(self, scope, receive, send) -> None:
        """The application, unless the server is over the cap with nothing idle to close: then 503."""
        if self.close_idle_beyond_cap():
            body = dumps({"error": f"server busy: {self.limits.max_connections} connections open and "
                                   f"none idle; try again"})
            await send({"type": "http.response.start", "status": 503, "headers": _json_headers(body)})
            await send({"type": "http.response.body", "body": body})
            return
        await self.application(scope, receive, send)


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """Headers of a JSON error answered by the connection itself, which then closes."""
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]


# ---------------------------------------------------------------------------------------------
# kmlp serve


def check_flags(host: str, port: int, model_name: str) -> None:
    """:class:`ConfigError` naming the flag, before anything is loaded."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be from 0 (any free port) to 65535, got {port}")
    if not model_name or re.search(r"[/:\s]", model_name):
        raise ConfigError(f"--model-name must be a name without '/', ':' or spaces, got {model_name!r}")
    if not host:
        raise ConfigError("--host must be an address or host name, got ''")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: a free port), or :class:`ConfigError` saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == 98:  # EADDRINUSE
            raise ConfigError(f"--port {port}: already in use on {host} (another server?); choose "
                              f"another --port, or 0 for any free one") from None
        raise ConfigError(f"--host {host}: cannot listen there ({e.strerror or e})") from None
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def local_hosts(host: str) -> list[str] | None:
    """The Host headers a server listening on ``host`` accepts: on a loopback address only the
    machine's own names, so a web page elsewhere cannot reach it by DNS rebinding; None (any) else."""
    return ["127.0.0.1", "localhost", "::1", "[::1]", host] if is_loopback(host) else None


def latest_export(run, log=say) -> Path:
    """The highest numbered SavedModel under ``run.path/export`` (the version TensorFlow Serving
    serves by default); exports the run first if it has none."""
    from .export import EXPORT_DIR, export_run, next_version
    from .runs import RunError

    root = Path(run.path) / EXPORT_DIR
    latest = next_version(root) - 1
    if latest < 1:
        path = export_run(run)
        log(f"exported {run.path} to {path} (it had no export)")
        return path
    path = root / str(latest)
    if not (path / "saved_model.pb").is_file():
        raise RunError(f"{path}: not a SavedModel (no saved_model.pb); remove it or export again "
                       f"with kmlp export {run.path}")
    return path


def create_app(run_dir, model_name: str = MODEL_NAME, data_path=None, limits: Limits = Limits(),
               allowed_hosts=None, log=say):
    """Load the run in ``run_dir`` (exporting it if it has no SavedModel) and build the application.
    Returns ``(app, served)``."""
    from .runs import load_run

    run = load_run(run_dir)
    served = ServedModel(latest_export(run, log), model_name, limits)
    playground = Playground(run, served, data_path, limits)
    if playground.marks_unavailable:
        log(f"train/dev/test marks unavailable: {playground.marks_unavailable}")
    return build_app(served, playground, limits, allowed_hosts), served


@contextmanager
def _stopped_by_signals(server):
    """SIGINT (Ctrl-C) and SIGTERM stop ``server`` gracefully, and after that end nothing else:
    uvicorn re-raises the signal it handled once it has shut down, and it lands here."""
    stop = lambda *_: setattr(server, "should_exit", True)  # noqa: E731
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def server_config(app, limits: Limits = Limits()):
    """uvicorn's settings for ``app``, with the bounds of ``limits``. The HTTP parser is h11, which
    bounds the size of the request line and headers (httptools does not), in
    :class:`BoundedH11Protocol`, which adds the timeouts and the connection cap uvicorn lacks (its
    ``limit_concurrency`` is left off: it counts idle connections); the event loop asyncio's."""
    import uvicorn

    return uvicorn.Config(app, loop="asyncio", http=functools.partial(BoundedH11Protocol, limits=limits),
                          lifespan="off", log_level="warning", access_log=False, server_header=False,
                          timeout_keep_alive=limits.keep_alive_timeout, timeout_graceful_shutdown=5,
                          h11_max_incomplete_event_size=limits.max_header_bytes)


def serve(run_dir, host: str = "127.0.0.1", port: int = DEFAULT_PORT, model_name: str = MODEL_NAME,
          data_path=None, limits: Limits = Limits(), log=say) -> int:
    """Serve a run until Ctrl-C or SIGTERM: the REST API and the playground on ``host``:``port``."""
    import uvicorn

    check_flags(host, port, model_name)
    sock = bind(host, port)  # first: a taken port is reported before a minute of loading
    try:
        app, served = create_app(run_dir, model_name, data_path, limits, local_hosts(host), log)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound}"
        config = server_config(app, limits)
        server = uvicorn.Server(config)
        log(f"serving {served.path} as model '{served.name}', version {served.version}")
        log(f"  playground:  {url}/")
        log(f"  REST API:    {url}/v1/models/{served.name}  (TensorFlow Serving's; signatures: "
            f"{', '.join(sorted(served.signatures))})")
        if not is_loopback(host):
            log(f"listening on {host}: anyone who can reach this machine can use the model")
        log("Ctrl-C stops the server")
        with _stopped_by_signals(server):
            server.run(sockets=[sock])
        app.state.work.pool.shutdown(wait=False, cancel_futures=True)
    finally:
        sock.close()
    log("kmlp serve: stopped")
    return 0
