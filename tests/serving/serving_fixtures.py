"""Fixtures of the serving tests: one trained tiny run, and one server of it, for the whole session.

A plugin, not a conftest.py: a second conftest.py would take the module name ``conftest`` from
tests/conftest.py, which every test folder imports ROOT and the rest from. A test module loads it
with ``pytest_plugins = ["serving_fixtures"]`` (and never imports it, so that pytest rewrites its
asserts).
"""

from __future__ import annotations

import pytest
from conftest import copy_run
from serving_helpers import Served, running

from kmlp.generation.sample import NameModel
from kmlp.runs.rundir import load_run
from kmlp.serving.app import create_app, local_hosts


@pytest.fixture(scope="session")
def tiny(tiny_run_dir, tmp_path_factory):
    """A copy of the session's tiny run, which the server exports into."""
    return load_run(copy_run(tiny_run_dir, tmp_path_factory.mktemp("serve") / "run"))


@pytest.fixture(scope="session")
def server(tiny):
    assert not (tiny.path / "export").exists()
    said = []
    app, served = create_app(tiny.path, allowed_hosts=local_hosts("127.0.0.1"), log=said.append)
    assert said == [f"exported {tiny.path} to {tiny.path / 'export' / '1'} (it had no export)"]
    with running(app) as port:
        yield Served(port, served, tiny, NameModel(tiny.model, tiny.vocab))
