"""The ``kmlp`` command: a thin layer that parses flags, calls the Python API and prints.

    main.py      the parser and main (one line and exit 2 for any mistake, SIGTERM as Ctrl-C)
    flags.py     the flags that build a model, and the configuration they give
    training.py  train, lr-find, tune
    names.py     evaluate, sample, score
    serving.py   export, serve
"""
