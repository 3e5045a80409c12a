"""kmlp.export: the SavedModel, checked in processes that never import kmlp, and by saved_model_cli."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import train_tiny_run

from kmlp.cli import main
from kmlp.export import ExportError, export_run, next_version
from kmlp.sample import NameModel

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
        "prefixed": names(pre), "log_likelihood": score["log_likelihood"].numpy().tolist(),
        "per_char": score["per_char"].numpy().tolist(), "score_tokens": score["tokens"].numpy().tolist(),
        "unknown_context_refused": refused,
    }))
""")


def fresh_python(*args, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = train_tiny_run(tmp_path_factory.mktemp("export"))
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


def test_saved_model_serves_without_kmlp(exported):
    run, path = exported
    result = fresh_python(sys.executable, "-c", LOAD_AND_CALL, str(path), json.dumps(CONTEXTS))
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert not out["kmlp_imported"]
    assert out["signatures"] == ["generate", "generate_with_prefix", "score", "serving_default"]
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
    assert all(n.startswith("el") for n in out["prefixed"])
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
    for name in ("serving_default", "generate", "generate_with_prefix", "score"):
        assert f"signature_def['{name}']" in shown.stdout
    assert "inputs['context']" in shown.stdout and "outputs['probabilities']" in shown.stdout
    ran = fresh_python(cli, "run", "--dir", str(path), "--tag_set", "serve",
                       "--signature_def", "serving_default", "--input_exprs", 'context=["emm", ""]')
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "Result for output key probabilities" in ran.stdout
    assert "Result for output key tokens" in ran.stdout
