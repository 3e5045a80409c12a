"""Runs: a trained model's folder on disk, and what kmlp may write, replace or delete.

    manifest.py  what kmlp wrote into a folder (sizes and hashes): only that is ever replaced
    folders.py   output folders checked before any work; results published whole, in one step
    lock.py      one kmlp process at a time writes a folder
    rundir.py    the run folder's files, and loading a run back with checks
    start.py     a training that starts from a run (--from): configuration, vocabulary, weights
"""
