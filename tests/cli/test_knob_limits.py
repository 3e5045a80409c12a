"""docs/reliability.md's table of every flag's limits: every flag of every command is in it, and every
value it says is refused is refused, in one line naming the flag (or the value), exit 2."""

import re

from cli_helpers import assert_one_line_error, main_in_a_fresh_process
from conftest import ROOT, copy_run

from kmlp.cli.main import build_parser

TABLE_DOC = ROOT / "docs" / "reliability.md"


def table_rows():
    """``(flags, commands, refused value or None)`` for each row of the table of limits."""
    text = TABLE_DOC.read_text(encoding="utf-8")
    table = text[text.index("| flag | commands |"):].split("\n\n")[0].splitlines()[2:]
    for row in table:
        flag_cell, commands, _, refused = (cell.strip() for cell in row.strip("|").split("|"))
        flags = re.findall(r"`(-[^`]+)`", flag_cell)
        value = refused.strip("`") if refused else None
        yield flags, [c.strip() for c in commands.split(",")], "" if value == "''" else value


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_flag_of_every_command_is_in_the_table():
    listed = {(flag, command) for flags, commands, _ in table_rows() for flag in flags for command in commands}
    missing = [(option, name) for name, sub in subcommands().items() for action in sub._actions
               for option in action.option_strings if option.startswith("--") and option != "--help"
               and (option, name) not in listed]
    assert missing == []


def base_args(command, flag, tmp_path, run, names_file):
    """The least a command needs besides the flag under test (a tiny run; one training step)."""
    length = [] if flag in ("--steps", "--epochs", "--minutes") else ["--steps", "1"]
    return {
        "train": ["--data", names_file, "--out", tmp_path / "run", "--n-hidden", "4", *length],
        "lr-find": ["--data", names_file, "--out", tmp_path / "lr", "--n-hidden", "4", "--num-steps", "2"],
        "tune": ["--data", names_file, "--out", tmp_path / "tune", "--max-trials", "1", *length],
    }.get(command, [run])


def test_every_value_the_table_refuses_is_refused_in_one_line(tiny_run_dir, tiny_names_file, tmp_path):
    run = copy_run(tiny_run_dir, tmp_path / "tiny")
    cases = []
    for flags, commands, refused in table_rows():
        if refused is None:
            continue
        flag, command = flags[-1], commands[0]
        cases.append(([command, *base_args(command, flag, tmp_path, run, tiny_names_file), flag, refused],
                      flag, refused))
    assert len(cases) >= 45
    results, _ = main_in_a_fresh_process(*(argv for argv, _, _ in cases))
    for (argv, flag, refused), (code, err) in zip(cases, results):
        line = assert_one_line_error(code, err)
        assert flag in line or (refused and refused in line), (argv, line)
    assert not (tmp_path / "run").exists() and not (tmp_path / "lr").exists() and not (tmp_path / "tune").exists()
