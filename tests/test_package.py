"""The package as a whole: its public names, commands and flags stay; the wheel carries every module;
the folders are the pipeline's stages, imports run one way, and modules stay a sitting long."""

import argparse
import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

import kmlp

# kmlp.__all__ before the package was laid out by stage: each name still imports from kmlp.
PUBLIC_NAMES = [
    "CharMLP", "Config", "ConfigError", "CosineDecay", "DataError", "ElapsedTime", "LRFindResult", "LRFinder",
    "LossCurve", "NameModel", "NamesData", "PRESETS", "Progress", "Run", "RunError", "Setup", "StepDecay",
    "StepTimer", "TensorBoard", "TrainResult", "TrainingDiverged", "Vocabulary", "build_compiled_model",
    "build_dataset", "build_model", "compile_model", "evaluate_loss", "export_run", "load_config_file",
    "load_run", "load_words", "make_dataset", "make_optimizer", "make_strategy", "plan_training", "prepare",
    "preset", "sample_names", "score_names", "split_words"]

MODEL_FLAGS = [
    "--arch", "--fuse", "--norm-epsilon", "--norm-momentum",
    "--batch-size", "--block-size", "--config", "--data", "--decay-at", "--decay-factor", "--dropout", "--epochs",
    "--init", "--jit", "--lr", "--n-embd", "--n-hidden", "--n-layers", "--no-jit", "--norm", "--optimizer",
    "--plateau-patience", "--precision", "--preset", "--rdrop", "--schedule", "--seed", "--split-seed", "--steps",
    "--steps-per-call", "--weight-decay"]
COMMANDS = {
    "train": MODEL_FLAGS + ["--devices", "--early-stopping", "--from", "--lr-passes", "--minutes", "--out", "--quiet",
              "--resume", "--samples", "--stop-at", "--strategy"],
    "evaluate": ["--data", "--split", "run_dir"],
    "sample": ["--data", "--json", "--max-len", "--min-len", "--new", "--num", "--prefix", "--seed",
               "--temperature", "--top-k", "--top-p", "--unique", "-n", "run_dir"],
    "score": ["--file", "--json", "names", "run_dir"],
    "export": ["--format", "--version", "run_dir"],
    "tune": ["--arch", "--algorithm", "--data", "--max-minutes", "--max-trials", "--out", "--seed", "--steps"],
    "lr-find": MODEL_FLAGS + ["--end-lr", "--json", "--num-steps", "--out", "--start-lr"],
    "serve": ["--data", "--host", "--model-name", "--port", "run_dir"],
}
STAGES = ["data", "models", "runs", "generation", "training", "export", "serving", "cli"]


def test_every_public_name_of_before_still_imports_from_kmlp():
    assert set(PUBLIC_NAMES) <= set(kmlp.__all__)
    for name in PUBLIC_NAMES:
        assert getattr(kmlp, name) is not None, name


def test_every_command_and_flag_of_before_is_still_there():
    from kmlp.cli.main import build_parser

    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == set(COMMANDS)
    for name, parser in commands.choices.items():
        given = {o for a in parser._actions for o in a.option_strings or [a.dest]} - {"-h", "--help", "help"}
        assert given == set(COMMANDS[name]), name


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "kmlp").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known) -> set[str]:
    """The kmlp modules ``name`` imports, anywhere in it (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        found |= {t for t in targets if t in known and t != name and not name.startswith(t + ".")}
    return found - {"kmlp"}


def test_the_stages_are_subpackages_and_no_import_runs_in_a_circle():
    assert all((ROOT / "kmlp" / stage / "__init__.py").is_file() for stage in STAGES)
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}

    def reaches(start, goal):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    circles = sorted({" <-> ".join(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)})
    assert circles == []


def test_no_module_is_over_500_lines_and_no_command_over_25():
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        assert len(lines) <= 500, (name, len(lines))
        if name.startswith("kmlp.cli"):
            for node in ast.parse("\n".join(lines)).body:
                if isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_"):
                    assert node.end_lineno - node.lineno + 1 <= 25, (name, node.name)


def test_the_wheel_holds_every_module_and_the_playground(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, source / item)
    shutil.copytree(ROOT / "kmlp", source / "kmlp", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("kmlp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        held = {n for n in archive.namelist() if n.startswith("kmlp/")}
    wanted = {p.relative_to(ROOT).as_posix() for p in (ROOT / "kmlp").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert wanted <= held, sorted(wanted - held)
    assert any(n.endswith("serving/playground/index.html") for n in held)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_says_what_it_holds(stage):
    doc = ast.get_docstring(ast.parse((ROOT / "kmlp" / stage / "__init__.py").read_text()))
    assert doc and len(doc) > 40, stage
