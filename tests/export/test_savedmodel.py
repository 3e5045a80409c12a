"""kmlp.export: the SavedModel, checked in processes that never import kmlp, and by saved_model_cli."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import copy_run

from kmlp.cli.main import main
from kmlp.config import MAX_SEED, MAX_VERSION
from kmlp.errors import ConfigError, ExportError
from kmlp.export.savedmodel import export_run, next_version
from kmlp.generation.sample import NameModel
from kmlp.runs.rundir import load_run
from kmlp.serving.served_model import tf_error_message

CONTEXTS = ["", "e", "emm", "..e", "isabella"]

# Runs in a fresh interpreter: only TensorFlow, never kmlp.
LOAD_AND_CALL = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    loaded = tf.saved_model.load(sys.argv[1])
    assert "kmlp" not in sys.modules
    sig = loaded.signatures
    nxt = sig["serving_default"](context=tf.constant(json.loads(sys.argv[2])))
    gen = lambda seed: sig["generate"](count=tf.constant(20), seed=tf.constant(seed, tf.int64),
                                       temperature=tf.constant(1.0))["names"]
    pre = sig["generate_with_prefix"](count=tf.constant(20), seed=tf.constant(1, tf.int64),
                                      temperature=tf.constant(1.0), prefix=tf.constant("el"))["names"]
    opt = sig["generate_with_options"](count=tf.constant(20), seed=tf.constant(1, tf.int64),
                                       temperature=tf.constant(0.8), top_k=tf.constant(5),
                                       top_p=tf.constant(0.9), prefix=tf.constant("el"),
                                       min_len=tf.constant(4), max_len=tf.constant(8))["names"]
    score = sig["score"](names=tf.constant(["emma", "ava", "zoë"]))
    try:
        sig["serving_default"](context=tf.constant(["zoë"]))
        refused = False
    except tf.errors.InvalidArgumentError:
        refused = True
    names = lambda t: [n.decode() for n in t.numpy()]
    print(json.dumps({
        "signatures": sorted(sig), "kmlp_imported": "kmlp" in sys.modules,
        "probabilities": nxt["probabilities"].numpy().tolist(), "tokens": names(nxt["tokens"]),
        "generated": names(gen(3)), "generated_again": names(gen(3)), "other_seed": names(gen(4)),
        "prefixed": names(pre), "with_options": names(opt), "log_likelihood": score["log_likelihood"].numpy().tolist(),
        "per_char": score["per_char"].numpy().tolist(), "score_tokens": score["tokens"].numpy().tolist(),
        "unknown_context_refused": refused,
    }))
""")


def fresh_python(*args, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def exported(tiny_run_dir, tmp_path_factory):
    run = load_run(copy_run(tiny_run_dir, tmp_path_factory.mktemp("export") / "run"))
    return run, export_run(run)


def test_export_writes_numbered_versions_and_never_replaces_one(exported, capsys):
    run, path = exported
    root = run.path / "export"
    assert path == root / "1"
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    assert next_version(root) == 2 and next_version(run.path / "nowhere") == 1
    with pytest.raises(ExportError, match="version 1 already exists"):
        export_run(run, version=1)
    (root / "5").mkdir()  # a version written elsewhere; the next is one more than the highest
    try:
        assert main(["export", str(run.path)]) == 0
        assert str(root / "6") in capsys.readouterr().out
        assert (root / "6" / "saved_model.pb").is_file()
        assert sorted(p.name for p in root.iterdir()) == ["1", "5", "6"]  # no staging folder left
        assert main(["export", str(run.path), "--version", "1"]) == 2
        assert "already exists" in capsys.readouterr().err
    finally:
        shutil.rmtree(root / "5")
        shutil.rmtree(root / "6", ignore_errors=True)


def test_versions_are_int64_as_in_tensorflow_serving(exported, tmp_path, capsys):
    """An export version is 1 .. 2**63-1, from Python and the command line alike (one line, nothing
    written); a folder whose name is not ASCII digits for an int64 is not a version."""
    run, _ = exported
    too_big = str(10**20)
    assert main(["export", str(run.path), "--version", too_big]) == 2
    err = capsys.readouterr().err
    assert err == (f"kmlp: error: --version must be an integer from 1 to {MAX_VERSION} (TensorFlow "
                   f"Serving's versions are int64), got {too_big}\n")
    for version in (MAX_VERSION + 1, 0, -1):
        with pytest.raises(ConfigError, match="--version must be an integer from 1 to"):
            export_run(run, version=version)
    assert sorted(p.name for p in (run.path / "export").iterdir()) == ["1"]
    for name in ("3", "\u0661\u0662", str(MAX_VERSION + 1), "x"):  # "١٢": Arabic-Indic twelve
        (tmp_path / name).mkdir()
    assert next_version(tmp_path) == 4


def test_saved_model_serves_without_kmlp(exported):
    run, path = exported
    result = fresh_python(sys.executable, "-c", LOAD_AND_CALL, str(path), json.dumps(CONTEXTS))
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert not out["kmlp_imported"]
    assert out["signatures"] == ["generate", "generate_with_options", "generate_with_prefix", "score",
                                 "serving_default"]
    assert out["tokens"] == [".", *run.vocab.chars]

    lm = NameModel(run.model, run.vocab)
    expected = np.asarray(lm.next_probs(lm.context_ids(np.array(CONTEXTS))))
    e, m, l, a = run.vocab.encode("emla")
    by_hand = np.array([[0, 0, 0], [0, 0, e], [e, m, m], [0, 0, e], [l, l, a]], np.int32)
    np.testing.assert_array_equal(lm.context_ids(np.array(CONTEXTS)), by_hand)
    keras_probs = np.asarray(run.model(by_hand, training=False), np.float64)
    keras_probs = np.exp(keras_probs - keras_probs.max(1, keepdims=True))
    keras_probs /= keras_probs.sum(1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"], keras_probs, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-6)

    assert out["generated"] == out["generated_again"] != out["other_seed"]
    assert out["generated"] == lm.sample(20, seed=3)  # the exported graph samples as kmlp does
    assert out["prefixed"] == lm.sample(20, seed=1, prefix="el")
    assert out["with_options"] == lm.sample(20, seed=1, temperature=0.8, top_k=5, top_p=0.9, prefix="el",
                                            min_len=4, max_len=8)
    assert all(4 <= len(n) <= 8 for n in out["with_options"])
    (emma, _), (ava, _) = lm.score(["emma", "ava"])
    np.testing.assert_allclose(out["log_likelihood"][:2], [emma, ava], atol=1e-5)
    assert out["log_likelihood"][2] == -np.inf and out["score_tokens"] == [5, 4, 4]
    np.testing.assert_allclose(out["per_char"][:2], [emma / 5, ava / 4], atol=1e-5)
    assert out["unknown_context_refused"]


def test_saved_model_cli_shows_and_runs_the_signatures(exported):
    _, path = exported
    cli = shutil.which("saved_model_cli")
    assert cli, "saved_model_cli (installed with tensorflow) is not on PATH"
    shown = fresh_python(cli, "show", "--dir", str(path), "--all")
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("serving_default", "generate", "generate_with_prefix", "generate_with_options", "score"):
        assert f"signature_def['{name}']" in shown.stdout
    assert "inputs['context']" in shown.stdout and "outputs['probabilities']" in shown.stdout
    ran = fresh_python(cli, "run", "--dir", str(path), "--tag_set", "serve",
                       "--signature_def", "serving_default", "--input_exprs", 'context=["emm", ""]')
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "Result for output key probabilities" in ran.stdout
    assert "Result for output key tokens" in ran.stdout


@pytest.fixture(scope="module")
def loaded(exported):
    import tensorflow as tf

    return tf.saved_model.load(str(exported[1])).signatures


def call(signature, **inputs):
    import tensorflow as tf

    dtypes = {"seed": tf.int64, "temperature": tf.float32, "top_p": tf.float32}
    return signature(**{k: tf.constant(v, dtypes.get(k)) for k, v in inputs.items()})


OPTIONS = dict(count=3, seed=1, temperature=1.0, top_k=0, top_p=1.0, prefix="", min_len=0, max_len=50)


@pytest.mark.parametrize("signature, inputs, message", [
    ("generate", {"count": -1}, "count must be from 0 to 10000, got -1"),
    ("generate", {"count": 2**31 - 1}, "count must be from 0 to 10000, got 2147483647"),
    ("generate", {"seed": -1}, f"seed must be from 0 to {MAX_SEED}, got -1"),
    ("generate", {"seed": -2**63}, f"seed must be from 0 to {MAX_SEED}, got -9223372036854775808"),
    ("generate_with_prefix", {"seed": MAX_SEED + 1}, f"seed must be from 0 to {MAX_SEED}, got {MAX_SEED + 1}"),
    ("generate_with_options", {"seed": 2**63 - 1}, f"seed must be from 0 to {MAX_SEED}, got {2**63 - 1}"),
    ("generate", {"temperature": float("inf")}, "temperature must be a positive finite number, got inf"),
    ("generate", {"temperature": 0.0}, "temperature must be a positive finite number, got 0"),
    ("generate", {"temperature": float("nan")}, "temperature must be a positive finite number, got nan"),
    ("generate_with_prefix", {"prefix": "zoë"}, "the prefix has characters outside the vocabulary"),
    ("generate_with_prefix", {"prefix": "a" * 60}, "prefix must be shorter than max_len (50), got 60 characters"),
    ("generate_with_options", {"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
    ("generate_with_options", {"top_k": -2}, "top_k must be 0 (all characters) or more, got -2"),
    ("generate_with_options", {"max_len": 1001}, "max_len must be from 1 to 1000, got 1001"),
    ("generate_with_options", {"min_len": 9, "max_len": 8}, "min_len must be from 0 to max_len (8), got 9"),
    ("score", {"names": ["emma"] * 10_001}, "at most 10000 names per call, got 10001"),
    ("score", {"names": ["emma", "a" * 1001]}, "names must be at most 1000 characters long, got one of 1001"),
    ("serving_default", {"context": ["e"] * 10_001}, "at most 10000 contexts per call, got 10001"),
    ("serving_default", {"context": ["zoë"]}, "a context has characters outside the vocabulary"),
])
def test_saved_model_refuses_requests_beyond_its_limits_in_one_clear_line(loaded, signature, inputs,
                                                                           message):
    import tensorflow as tf

    names = {"generate": ["count", "seed", "temperature"],
             "generate_with_prefix": ["count", "seed", "temperature", "prefix"],
             "generate_with_options": list(OPTIONS)}
    base = {k: OPTIONS[k] for k in names.get(signature, [])}
    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        call(loaded[signature], **{**base, **inputs})
    assert f"assertion failed: [{message}]" in refused.value.message
    assert tf_error_message(refused.value) == message  # what kmlp serve answers: the whole message


def test_saved_model_serves_at_its_limits(loaded, exported):
    run, _ = exported
    names = call(loaded["generate"], count=10_000, seed=1, temperature=1.0)["names"].numpy()
    assert len(names) == 10_000
    scored = call(loaded["score"], names=["emma", "a" * 1000])
    assert scored["tokens"].numpy().tolist() == [5, 1001]
    assert call(loaded["generate"], count=0, seed=1, temperature=1.0)["names"].shape == (0,)
    # the command line's seeds, 0 to MAX_SEED
    for seed in (0, MAX_SEED):
        assert len(call(loaded["generate"], count=2, seed=seed, temperature=1e-38)["names"].numpy()) == 2


def test_litert_export_writes_a_model_and_its_vocabulary_beside_it(exported, capsys):
    run, _ = exported
    path = export_run(run, format="litert")
    root = run.path / "litert"
    assert path == root / "1" and sorted(p.name for p in path.iterdir()) == ["model.json", "model.tflite"]
    info = json.loads((path / "model.json").read_text(encoding="utf-8"))
    assert info["tokens"] == [".", *run.vocab.chars] and info["block_size"] == run.config.block_size
    assert (path / "model.tflite").stat().st_size > 1000
    with pytest.raises(ExportError, match="version 1 already exists"):
        export_run(run, format="litert", version=1)
    assert main(["export", str(run.path), "--format", "litert"]) == 0
    assert str(root / "2" / "model.tflite") in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == ["1", "2"]  # no staging folder left
    assert not (run.path / "export" / "2").exists()  # the SavedModel versions are apart


def test_a_failed_litert_export_leaves_nothing_behind(exported, monkeypatch):
    from kmlp.export import savedmodel

    run, _ = exported
    before = sorted(p.name for p in (run.path / "litert").iterdir())

    def broken(run, folder):
        (folder / "model.tflite").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(savedmodel, "_write_litert", broken)
    with pytest.raises(OSError, match="disk full"):
        export_run(run, format="litert")
    assert sorted(p.name for p in (run.path / "litert").iterdir()) == before


# Runs in a fresh interpreter: only ai_edge_litert and numpy, never kmlp (nor TensorFlow).
LITERT_PROBS = textwrap.dedent("""
    import json, sys
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=sys.argv[1])
    run = interpreter.get_signature_runner()
    contexts = np.array(json.loads(sys.argv[2]), np.int32)
    logits = next(iter(run(**{next(iter(run.get_input_details())): contexts}).values()))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    print(json.dumps({"probabilities": probs.tolist(), "modules": sorted(
        m for m in sys.modules if m.split(".")[0] in ("kmlp", "tensorflow", "keras"))}))
""")


def test_litert_model_predicts_as_the_keras_model_without_kmlp(exported):
    run, _ = exported
    path = export_run(run, format="litert", export_root=run.path / "litert_probs") / "model.tflite"
    rng = np.random.default_rng(0)
    contexts = rng.integers(0, len(run.vocab), size=(500, run.config.block_size)).astype(np.int32)
    result = fresh_python(sys.executable, "-c", LITERT_PROBS, str(path), json.dumps(contexts.tolist()))
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["modules"] == []
    logits = np.asarray(run.model(contexts, training=False), np.float64)
    keras_probs = np.exp(logits - logits.max(1, keepdims=True))
    keras_probs /= keras_probs.sum(1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"], keras_probs, atol=1e-5)
