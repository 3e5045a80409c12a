"""Every command on the hierarchical model, as a user types it: sample, score, evaluate, export
(SavedModel and LiteRT), lr-find and train --from, on the session's tiny hierarchical run."""

import json

from cli_helpers import main
from conftest import HIERARCHICAL, copy_run

HIERARCHICAL_FLAGS = ["--arch", "hierarchical", "--block-size", str(HIERARCHICAL["block_size"]),
                      "--n-layers", str(HIERARCHICAL["n_layers"]), "--norm", "batch", "--init", "fan_in"]


def test_every_command_runs_on_a_hierarchical_run(hierarchical_run_dir, tiny_names_file, tmp_path, capsys):
    run = copy_run(hierarchical_run_dir, tmp_path / "run")
    code, out, err = main(capsys, "sample", run, "-n", "4", "--seed", "1")
    assert code == 0 and "new: " in out and len(out.splitlines()) == 5, err  # four names, then the summary
    code, out, err = main(capsys, "score", run, "emma")
    assert code == 0 and "emma" in out, err
    code, out, err = main(capsys, "evaluate", run, "--split", "dev")
    assert code == 0 and "perplexity" in out, err
    for fmt, made in (("saved_model", run / "export" / "1" / "saved_model.pb"),
                      ("litert", run / "litert" / "1" / "model.tflite")):
        code, _, err = main(capsys, "export", run, "--format", fmt)
        assert code == 0 and made.is_file(), err
    code, _, err = main(capsys, "lr-find", "--data", tiny_names_file, "--out", tmp_path / "lr", *HIERARCHICAL_FLAGS,
                        "--n-embd", "4", "--n-hidden", "8", "--num-steps", "20")
    assert code == 0 and (tmp_path / "lr" / "lr_find.csv").is_file(), err
    code, out, err = main(capsys, "train", "--data", tiny_names_file, "--from", run, "--out", tmp_path / "tuned",
                          "--steps", "20", "--no-jit", "--samples", "2", "--quiet")
    assert code == 0 and f"starting from {run.resolve()}" in out, err
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["config"]["arch"] == "hierarchical"
