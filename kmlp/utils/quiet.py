"""Keep TensorFlow's native start-up and runtime logging (CUDA probing, oneDNN, XLA, absl) off the
terminal of a CPU machine.

Much of it is written by C++ straight to file descriptor 2, some before any logging setting is read,
so the only reliable switch is the descriptor itself: fd 2 goes to /dev/null and Python's
``sys.stderr`` keeps writing to the real terminal. ``KMLP_TF_LOGS=1`` turns this off for debugging.
"""

from __future__ import annotations

import os
import sys
import warnings

_done = False


def silence_tensorflow() -> None:
    global _done
    if _done or os.environ.get("KMLP_TF_LOGS"):
        return
    _done = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    try:
        sys.stderr.flush()
        real_stderr = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = os.fdopen(real_stderr, "w", buffering=1, encoding="utf-8", errors="replace")
    except OSError:  # no usable fd 2 (some embedded interpreters): leave things as they are
        pass
    warnings.filterwarnings("ignore", module=r"keras(\.|$)")
    warnings.filterwarnings("ignore", module=r"tensorflow(\.|$)")
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
