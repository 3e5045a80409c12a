"""kmlp serve on a hierarchical run: the same REST answers as for a flat one."""

from conftest import copy_run
from serving_helpers import PREDICT, Served, generate, running

from kmlp.generation.sample import NameModel
from kmlp.runs.rundir import load_run
from kmlp.serving.app import create_app, local_hosts


def test_a_hierarchical_run_is_exported_and_served_like_a_flat_one(hierarchical_run_dir, tmp_path):
    run = load_run(copy_run(hierarchical_run_dir, tmp_path / "run"))
    app, served = create_app(run.path, allowed_hosts=local_hosts("127.0.0.1"), log=lambda *_: None)
    lm = NameModel(run.model, run.vocab)
    with running(app) as port:
        server = Served(port, served, run, lm)
        assert server.ok("POST", PREDICT, generate(count=6, seed=2)) == {"outputs": lm.sample(6, seed=2)}
        scored = server.ok("POST", PREDICT, {"signature_name": "score", "instances": ["emma"]})
    (log_likelihood, tokens), = lm.score(["emma"])
    [row] = scored["predictions"]
    assert abs(row["log_likelihood"] - log_likelihood) < 1e-4 and row["tokens"] == tokens
