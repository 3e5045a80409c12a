"""The README and its pages keep their word: the set-up commands come first, the README stays short,
its Python examples run as written, every `kmlp` command shown parses, and every link, path and
module name leads somewhere."""

import argparse
import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
SETUP_COMMANDS = ['python -m pip install -e . && kmlp train',
                  'python -m pip install -e ".[test]" && python -m pytest']
SHELL_OPERATORS = {"&&", "||", "|", ";", "&"}


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def prose(text: str) -> str:
    """``text`` without its fenced code blocks (whose ``#`` lines are comments, not headings)."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# ---------------------------------------------------------------------------------------------
# What a newcomer reads first


def test_readme_has_the_two_setup_commands_first():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == SETUP_COMMANDS
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci


def test_readme_is_short_and_sets_up_within_its_first_40_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 350
    opening = "\n".join(lines[:40])
    for command in SETUP_COMMANDS:
        assert command in opening, command


# ---------------------------------------------------------------------------------------------
# Code blocks, as written


def run_block(code: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def output_of(process: subprocess.Popen) -> str:
    try:
        out, err = process.communicate(timeout=600)
    finally:
        process.kill()  # nothing left to stop once it has ended
    assert process.returncode == 0, err[-3000:]
    return out


@pytest.mark.integration
def test_every_python_example_runs_as_written_in_a_fresh_process(names_path, tmp_path):
    """Each block in its own process, in one folder, in order: names.txt is found as the README says
    (here, the verified copy beside the project), and the LiteRT example reads the run the second
    example trains. The first example needs nothing of the others, so it runs beside them. The
    folder has the shipped run, as the repository's has."""
    (tmp_path / "saved_models").mkdir()
    (tmp_path / "saved_models" / "names-base").symlink_to(ROOT / "saved_models" / "names-base")
    own_fit, *others = code_blocks(README.read_text(encoding="utf-8"), "python")
    assert others, "the README shows fewer Python examples than it describes"
    first = run_block(own_fit, tmp_path)
    try:
        later = [output_of(run_block(code, tmp_path)) for code in others]
    except BaseException:
        first.kill()
        raise
    outputs = [output_of(first), *later]

    assert "train 25,640 names" in outputs[0]
    dev_losses = [float(v) for out in outputs for v in re.findall(r"dev loss (\d\.\d+)", out)]
    assert len(dev_losses) >= 2 and all(loss < 2.3 for loss in dev_losses), outputs
    assert len(eval(re.search(r"sampled: (\[.*\])", outputs[0]).group(1))) == 5
    assert len(eval(re.search(r"LiteRT: (\[.*\])", outputs[-1]).group(1))) == 5
    assert (tmp_path / "mlp.keras").is_file() and (tmp_path / "runs" / "fast" / "model.keras").is_file()
    assert "started_from" in (tmp_path / "runs" / "tuned" / "config.json").read_text(encoding="utf-8")
    assert (tmp_path / "logs" / "train" / "embedding.tsv").is_file()  # kmlp.TensorBoard in your own fit


def shell_commands(block: str):
    """Each simple command of a bash block as its words: continued lines joined, comments dropped,
    and lines cut at ``&&``, ``|``, ``;`` and the like."""
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command = []
        for word in [*lexer, ";"]:
            if word in SHELL_OPERATORS:
                if command:
                    yield line, command
                command = []
            else:
                command.append(word)


def test_every_kmlp_command_shown_parses():
    from kmlp.cli.main import build_parser

    parser = build_parser()
    shown = []
    for page in PAGES:
        for block in code_blocks(page.read_text(encoding="utf-8"), "bash"):
            for line, words in shell_commands(block):
                if words[0] != "kmlp":
                    continue  # pip, python, curl, tensorboard, export ...
                try:
                    parser.parse_args(words[1:])
                except SystemExit:
                    pytest.fail(f"{page_id(page)}: `{line.strip()}` does not parse")
                shown.append(words[1])
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) <= set(shown)


def test_the_readme_tour_has_every_command_once():
    from kmlp.cli.main import build_parser

    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    text = README.read_text(encoding="utf-8")
    tour = text[text.index("## Command line"):]
    tour = code_blocks(tour, "bash")[0]
    assert sorted(words[1] for _, words in shell_commands(tour)) == sorted(commands.choices)


# ---------------------------------------------------------------------------------------------
# Links, paths and names


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(h) for h in re.findall(r"^#+ (.*)$", prose(page.read_text(encoding="utf-8")), re.M)}


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    links = re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text(encoding="utf-8")))
    assert links or page != README
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:
        path, _, heading = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page_id(page)}: {link} leads nowhere"
        if heading:
            assert heading in anchors(target), f"{page_id(page)}: {link}: no such heading"


def definitions(body) -> dict:
    """The names a module's (or class's) statements define, each with the statement defining it."""
    found = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found.update({t.id: node for t in targets if isinstance(t, ast.Name)})
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update({(a.asname or a.name).split(".")[0]: node for a in node.names})
    return found


def resolves(dotted: str) -> bool:
    """Whether ``kmlp.a.b.name`` is a module of the package, or a name one defines (a name exported at
    the top level is looked up where it is defined), or a class's attribute."""
    import kmlp

    parts = dotted.split(".")[1:]
    folder = ROOT / "kmlp"
    while parts and (folder / parts[0] / "__init__.py").is_file():
        folder = folder / parts.pop(0)
    module = folder / "__init__.py"
    if parts and (folder / f"{parts[0]}.py").is_file():
        module = folder / f"{parts.pop(0)}.py"
    if not parts:
        return True
    if module == ROOT / "kmlp" / "__init__.py" and parts[0] in kmlp.__all__:
        module = ROOT / "kmlp" / (kmlp._WHERE[parts[0]].replace(".", "/") + ".py")
    node = definitions(ast.parse(module.read_text(encoding="utf-8")).body).get(parts[0])
    if node is None or len(parts) == 1:
        return node is not None
    return isinstance(node, ast.ClassDef) and parts[1] in definitions(node.body)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_module_path_and_file_named_exists(page):
    text = page.read_text(encoding="utf-8")
    for dotted in set(re.findall(r"(?<![\w./-])kmlp(?:\.[A-Za-z_]\w*)+", text)):
        assert resolves(dotted), f"{page_id(page)}: {dotted} is no module or name of kmlp"
    for path in set(re.findall(r"(?<![\w./-])((?:kmlp|tests|benchmarks|docs)/[\w./-]*)", text)):
        assert (ROOT / path.rstrip(".,")).exists(), f"{page_id(page)}: {path} does not exist"


def test_the_benchmarks_page_describes_every_script():
    page = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    described = set(re.findall(r"^## (\w+\.py)", page, re.M))
    assert described == {p.name for p in (ROOT / "benchmarks").glob("*.py")}


def test_every_top_level_name_resolves_and_none_is_shadowed_by_a_module():
    import pkgutil

    import kmlp

    modules = {m.name for m in pkgutil.iter_modules(kmlp.__path__)}
    assert not modules & set(kmlp.__all__)  # `import kmlp.training.train` would replace such a name
    for name in kmlp.__all__:
        assert getattr(kmlp, name) is not None, name
