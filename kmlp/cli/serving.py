"""The commands that hand a saved run to other programs: ``kmlp export`` (a SavedModel for
TensorFlow Serving, or a LiteRT model) and ``kmlp serve`` (TensorFlow Serving's REST API and a
playground page)."""

from __future__ import annotations

from kmlp.cli.flags import add_run_command


def add_export_parser(sub) -> None:
    p = add_run_command(sub, "export", help="write a TensorFlow SavedModel for serving, or a LiteRT model",
                        description="Write the model, its vocabulary and its sampling and scoring "
                                    "functions as a SavedModel to DIR/export/<version>/, the layout "
                                    "TensorFlow Serving loads; or, with --format litert, a LiteRT "
                                    "model (model.tflite and model.json) to DIR/litert/<version>/.")
    p.add_argument("--format", choices=["saved_model", "litert"], default="saved_model",
                   help="saved_model (default): for TensorFlow Serving; litert: for phones and "
                        "embedded devices, run by the LiteRT interpreter")
    p.add_argument("--version", type=int,
                   help="version folder number (default: one more than the highest there); "
                        "an existing version is never replaced")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from kmlp.config import check_version
    from kmlp.runs.lock import check_free

    if args.version is not None:  # before TensorFlow loads
        check_version(args.version)
    check_free(args.run_dir)  # at once, though export takes the lock after loading TensorFlow
    from kmlp.export.savedmodel import export_run
    from kmlp.runs.rundir import load_run

    run = load_run(args.run_dir)
    path = export_run(run, version=args.version, format=args.format)
    if args.format == "litert":
        print(f"LiteRT model written to {path / 'model.tflite'}, its vocabulary to {path / 'model.json'}")
        print(f"generate names with it (no TensorFlow needed): python -c \"from kmlp.export.litert import "
              f"LiteRTModel, generate_names; print(generate_names(LiteRTModel('{path / 'model.tflite'}'), 5))\"")
        return 0
    print(f"SavedModel written to {path}")
    print("signatures: serving_default (context -> next-character probabilities), generate, "
          "generate_with_prefix, generate_with_options, score")
    print(f"inspect it with: saved_model_cli show --dir {path} --all")
    return 0


def cmd_serve(args) -> int:
    from kmlp.serving.app import serve

    return serve(args.run_dir, host=args.host, port=args.port, model_name=args.model_name,
                 data_path=args.data)


def add_serve_parser(sub) -> None:
    p = add_run_command(sub, "serve", help="serve a model over HTTP: TensorFlow Serving's REST API and a "
                                      "playground page",
                        description="Serve the run's SavedModel (exported first if it has none) with "
                                    "TensorFlow Serving's REST API at /v1/models/NAME, and a playground "
                                    "page at / to sample names and see the model's next-character "
                                    "probabilities. Ctrl-C stops it.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for "
                        "every network interface)")
    p.add_argument("--port", type=int, default=8501,
                   help="TCP port (default 8501, TensorFlow Serving's REST port; 0 for any free one)")
    p.add_argument("--model-name", default="kmlp",
                   help="the model's name in the URLs, /v1/models/NAME (default kmlp)")
    p.add_argument("--data", metavar="PATH",
                   help="names file that marks train/dev/test (default: the one the model was trained on)")
    p.set_defaults(func=cmd_serve)


