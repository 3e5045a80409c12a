"""A SavedModel version answering TensorFlow Serving's status, metadata and predict requests.

:class:`ServedModel` loads one version with ``tf.saved_model.load`` and reads its signatures (their
inputs and outputs, names, dtypes and shapes) from the SavedModel itself; a predict request in the
row (``instances``) or columnar (``inputs``) format runs one of them, and TensorFlow's errors become
:class:`~kmlp.serving.rest.RequestError` with TensorFlow Serving's HTTP status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmlp.config import MAX_VERSION
from kmlp.serving.limits import Limits
from kmlp.serving.rest import RequestError, is_named, json_to_tensor, to_json_values

MODEL_NAME = "kmlp"  # the name a model is served under unless told otherwise


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

    def status(self, name: str, version: int | None, label: str | None) -> dict:
        if label is not None:
            raise RequestError(f"Unrecognized servable version label: {label}")
        if name != self.name:
            raise RequestError(f"Could not find any versions of model {name}", 404)
        if version is not None and version != self.version:
            raise RequestError(f"Could not find version {version} of model {name}", 404)
        return {"model_version_status": [{"version": str(self.version), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata(self, name: str, version: int | None, label: str | None) -> dict:
        self.check_spec(name, version, label)
        return {"model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
                "metadata": {"signature_def": {"signature_def": self.signature_defs}}}

    def check_spec(self, name: str, version: int | None, label: str | None) -> None:
        """:class:`RequestError` unless the URL names this model (and this version, if one)."""
        if label is not None:
            raise RequestError(f"Unrecognized servable version label: {label}")
        if name != self.name or (version is not None and version != self.version):
            wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
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
        if is_named(instances[0]):
            for i, item in enumerate(instances):
                if not is_named(item):
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
            if any(is_named(item) for item in instances):
                raise RequestError("Expecting value/list but got object in the input list")
            columns = {names[0]: instances}
        return {name: self._tensor(signature, name, columns[name], row=True) for name in names}

    def columnar_inputs(self, signature: Signature, inputs) -> dict:
        """Tensors from the columnar format: one value (or nested list) per named input."""
        names = sorted(signature.inputs)
        if not is_named(inputs):
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


def parse_version(text: str | None) -> int | None:
    """The version in a URL (its ASCII digits, as the paths match them) as TensorFlow Serving reads
    it, an int64; a longer number is :class:`RequestError` with its message."""
    if text is None:
        return None
    if len(text.lstrip("0")) > len(str(MAX_VERSION)) or int(text) > MAX_VERSION:
        raise RequestError(f"Failed to convert version: {text} to numeric.")
    return int(text)


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
    if failed:  # the Assert's data, each item in brackets: "[message] [value]"; a message may hold "]"
        data = _without_node(failed.group(1)).removeprefix("[").removesuffix("]")
        parts = [p.strip() for p in data.split("] [")]
        if any(p.startswith("Condition ") for p in parts):  # assert_*: the rest is tensor dumps
            parts = parts[:1]
        return " ".join(p for p in parts if p).rstrip(". ") or "assertion failed"
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(
        ("Graph execution error", "Detected at node", "<stack traces"))]
    return _without_node(lines[0]) if lines else type(error).__name__


def _without_node(line: str) -> str:
    """A line of a TensorFlow error without the node or op named at its end."""
    return re.sub(r"\s*(\[\[\{\{node |\[Op:).*$", "", line).strip()


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
