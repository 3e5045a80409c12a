"""TensorFlow Serving's REST conventions for request and answer bodies.

A request body is read within :class:`Limits` and parsed as a JSON object (:func:`read_body`,
:func:`parse_json`); JSON values become tensors by the rules of TensorFlow Serving's
``json_tensor.cc`` (:func:`json_to_tensor`), and tensors become JSON as it writes them
(:func:`to_json_values`, :func:`dumps`). A request that breaks a rule is a :class:`RequestError`,
answered as ``{"error": "..."}`` with its status.
"""

from __future__ import annotations

import base64
import binascii
import json
import math

import numpy as np

from kmlp.serving.limits import Limits


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


def error_response(message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of TensorFlow Serving's error answer, ``{"error": message}``, for ASGI."""
    body = dumps({"error": message})
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


def _is_b64(value) -> bool:
    """A binary string as TensorFlow Serving writes one: ``{"b64": "<base64>"}``."""
    return isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)


def is_named(value) -> bool:
    """A JSON object of named inputs (not a ``{"b64": ...}`` value)."""
    return isinstance(value, dict) and not _is_b64(value)


# ---------------------------------------------------------------------------------------------
# Request bodies


async def read_body(request, limits: Limits) -> bytes:
    """The request body, or :class:`RequestError` as soon as it is known to pass
    ``limits.max_body_bytes``. The rest of a refused body is the connection's to drop (see
    :class:`~kmlp.serving.connections.BoundedH11Protocol`), so that the client reads the answer."""
    too_big = RequestError(f"request body over {limits.max_body_bytes:,} bytes (the limit)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


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
