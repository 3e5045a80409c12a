"""What the tests of kmlp.cli share: running ``kmlp`` in this process, the one-line error it must
print, and tiny model flags."""

import json
import os
import resource
import subprocess
import sys
import textwrap

from conftest import ROOT

from kmlp.cli import main as cli

TINY_MODEL = ["--block-size", "3", "--n-embd", "4", "--n-hidden", "16", "--batch-size", "8",
              "--steps", "40", "--decay-at", "none", "--optimizer", "adam", "--lr", "0.01", "--no-jit"]
NOISE = ("cuda", "oneDNN", "absl", "cpu_feature_guard", "I0000", "W0000", "E0000", "Traceback",
         "UserWarning", "tensorflow")


def main(capsys, *args):
    """``kmlp ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kmlp: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in lines[0], (needle, err)
    return lines[0]


_IN_ONE_PROCESS = textwrap.dedent("""
    import contextlib, io, json, sys
    from kmlp.cli.main import main
    from kmlp.utils.quiet import silence_tensorflow
    silence_tensorflow()  # now, not in the first main(): it replaces sys.stderr, which is redirected below
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(argv)
        results.append([code, err.getvalue()])
    print(json.dumps({"results": results, "tensorflow": "tensorflow" in sys.modules}))
""")


def main_in_a_fresh_process(*argvs):
    """``kmlp ARGV`` for each ARGV, in one new process: ``([(exit status, stderr), ...], whether
    TensorFlow was loaded)``."""
    done = subprocess.run([sys.executable, "-c", _IN_ONE_PROCESS, json.dumps([list(map(str, a)) for a in argvs])],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)
    return [tuple(result) for result in report["results"]], report["tensorflow"]


def kmlp_process(*args, stdin: bytes | None = None, address_space: int | None = None, timeout: float = 300):
    """``kmlp ARGS`` in a fresh process, as a user runs it, fed ``stdin`` and with at most
    ``address_space`` bytes of memory if given: the finished process (its output as text)."""
    def cap_memory():
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    env = {key: value for key, value in os.environ.items() if key != "KMLP_TF_LOGS"}
    done = subprocess.run([sys.executable, "-m", "kmlp", *map(str, args)], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, timeout=timeout, preexec_fn=cap_memory)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())

