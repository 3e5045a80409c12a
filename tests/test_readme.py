"""The README's Python API example runs as written (on the shared names.txt) and says what it shows."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_two_setup_commands_first():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ['python -m pip install -e . && kmlp train',
                        'python -m pip install -e ".[test]" && python -m pytest']
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci


@pytest.mark.integration
def test_python_api_example_runs_as_written(names_path, tmp_path):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "the README shows no Python example"
    code = "\n".join(blocks)  # as written: names.txt is found (here, the verified copy beside the project)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "train 25,640 names" in out
    dev_losses = [float(v) for v in re.findall(r"dev loss (\d\.\d+)", out)]
    assert len(dev_losses) >= 2 and all(loss < 2.3 for loss in dev_losses), out
    sampled = re.search(r"sampled: (\[.*\])", out).group(1)
    assert len(eval(sampled)) == 5
    assert (tmp_path / "mlp.keras").is_file() and (tmp_path / "runs" / "fast" / "model.keras").is_file()
    assert (tmp_path / "logs" / "train" / "embedding.tsv").is_file()  # kmlp.TensorBoard in your own fit


def test_every_top_level_name_resolves_and_none_is_shadowed_by_a_module():
    import pkgutil

    import kmlp

    modules = {m.name for m in pkgutil.iter_modules(kmlp.__path__)}
    assert not modules & set(kmlp.__all__)  # `import kmlp.train` would replace such a name
    for name in kmlp.__all__:
        assert getattr(kmlp, name) is not None, name
