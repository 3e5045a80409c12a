"""kmlp.export.litert: the reference loop runs an exported model.tflite without TensorFlow and draws the names
kmlp sample draws."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, copy_run

from kmlp.errors import ConfigError
from kmlp.export.savedmodel import export_run
from kmlp.generation.sample import NameModel
from kmlp.runs.rundir import load_run

OPTION_SETS = [{}, {"temperature": 0.7, "top_k": 5}, {"top_p": 0.8, "prefix": "e", "min_len": 5},
               {"temperature": 1.6, "max_len": 6}, {"top_k": 1, "prefix": "is"}]

# Runs where `import tensorflow` fails: the loop needs numpy and ai_edge_litert only.
REFERENCE_LOOP = textwrap.dedent("""
    import json, sys
    from kmlp.export.litert import LiteRTModel, generate_names

    model = LiteRTModel(sys.argv[1])
    names = [generate_names(model, 40, seed=3, **options) for options in json.loads(sys.argv[2])]
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
    print(json.dumps({"names": names, "heavy_modules": heavy}))
""")


@pytest.fixture(scope="module")
def exported(tiny_run_dir, tmp_path_factory):
    run = load_run(copy_run(tiny_run_dir, tmp_path_factory.mktemp("litert") / "run"))
    return run, export_run(run, format="litert") / "model.tflite"


def without_tensorflow(tmp_path) -> dict:
    """An environment in which ``import tensorflow`` (and so keras) fails."""
    for name in ("tensorflow", "keras"):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} hidden for this test')\n")
    path = os.pathsep.join([str(tmp_path), str(ROOT)])
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}


def test_reference_loop_draws_the_names_kmlp_sample_draws_without_tensorflow(exported, tmp_path):
    run, tflite = exported
    done = subprocess.run([sys.executable, "-c", REFERENCE_LOOP, str(tflite), json.dumps(OPTION_SETS)],
                          capture_output=True, text=True, timeout=300, env=without_tensorflow(tmp_path),
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["heavy_modules"] == []
    lm = NameModel(run.model, run.vocab)
    for options, names in zip(OPTION_SETS, out["names"]):
        assert names == lm.sample(40, seed=3, **options), options


def test_reference_loop_checks_its_options_and_its_files(exported, tmp_path):
    from kmlp.export.litert import LiteRTModel, generate_names

    _, tflite = exported
    model = LiteRTModel(tflite)
    with pytest.raises(ConfigError, match=r"--top-p must be in \(0, 1\]"):
        generate_names(model, 2, seed=1, top_p=2.0)
    with pytest.raises(ConfigError, match="--seed"):
        generate_names(model, 2, seed=-1)
    with pytest.raises(ConfigError, match="--prefix 'zoë'"):
        generate_names(model, 2, seed=1, prefix="zoë")
    other = tmp_path / "model.tflite"
    other.write_bytes(tflite.read_bytes())
    other.with_suffix(".json").write_text(json.dumps({"format": "something else"}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a kmlp-litert description"):
        LiteRTModel(other)


def test_the_readme_shows_the_reference_loop_as_it_is():
    import inspect

    from kmlp.export.litert import generate_names

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert inspect.getsource(generate_names) in readme


@pytest.mark.parametrize("text, message", [("[" * 100_000, "not valid JSON (nested too deeply)"),
                                           ("[]", "expected a JSON object, found an array")])
def test_a_description_that_is_not_kmlps_is_one_line_naming_it(tmp_path, text, message):
    from kmlp.export.litert import LiteRTModel

    (tmp_path / "model.json").write_text(text)
    with pytest.raises(ValueError) as error:
        LiteRTModel(tmp_path / "model.tflite")
    assert str(error.value) == f"{tmp_path / 'model.json'}: {message}"
