"""The cluster a training process belongs to, as TensorFlow's ``TF_CONFIG`` environment variable
describes it, read and checked without TensorFlow (so that a mistake in it is reported at once).

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}'

Every worker runs the same command with the same cluster and its own ``index``. The chief (the
``chief`` task if the cluster names one, else worker 0) alone writes the run directory; every other
worker keeps its lock and backup beside the run under its own name (``worker-1``), so that workers
sharing a machine and a folder never collide (see :func:`kmlp.runs.folders.beside`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kmlp.errors import ConfigError
from kmlp.utils.jsonfile import parse_json

TRAINING_TASKS = ("chief", "worker")  # MultiWorkerMirroredStrategy's; kmlp has no use for ps or evaluator
EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
           '"task": {"type": "worker", "index": 0}}')


@dataclass(frozen=True)
class Task:
    """This process's place in a cluster of ``workers`` training processes."""

    type: str     # "chief" or "worker"
    index: int
    workers: int  # training processes in all, the chief included
    chief: bool   # whether this one writes the run

    @property
    def name(self) -> str:
        """How its files beside a run are told apart: ``worker-1``."""
        return f"{self.type}-{self.index}"


def task_in(cluster: dict, task_type: str, index: int) -> Task:
    """The :class:`Task` of ``(task_type, index)`` in ``cluster`` (``{"worker": [addresses], ...}``)."""
    sizes = {kind: len(cluster.get(kind) or ()) for kind in TRAINING_TASKS}
    chief = task_type == "chief" or (task_type == "worker" and index == 0 and not sizes["chief"])
    return Task(type=task_type, index=index, workers=sum(sizes.values()), chief=chief)


def read_tf_config(text: str | None = None) -> Task:
    """This process's task from ``TF_CONFIG`` (or ``text``), checked as MultiWorkerMirroredStrategy
    will use it: valid JSON, a list of ``host:port`` addresses per task type (chief and worker only),
    no address twice, and a task type and index that name one of them. Raises :class:`ConfigError`
    with one line on what is wrong."""
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    if not text.strip():
        raise ConfigError(f"--strategy multi-worker reads the cluster from the TF_CONFIG environment "
                          f"variable, which is not set; on each worker set e.g. TF_CONFIG='{EXAMPLE}' "
                          f"with that worker's index")
    spec = parse_json(text, "TF_CONFIG", expect=None, error=ConfigError)
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
        raise ConfigError(f"TF_CONFIG names no workers; expected e.g. {EXAMPLE}")
    others = sorted(set(cluster) - set(TRAINING_TASKS))
    if others:
        raise ConfigError(f"TF_CONFIG: kmlp trains with chief and worker tasks only, not {', '.join(others)}")
    seen = set()
    for kind in TRAINING_TASKS:
        addresses = cluster.get(kind) or []
        if not isinstance(addresses, list):
            raise ConfigError(f"TF_CONFIG: cluster.{kind} must be a list of host:port addresses")
        for address in addresses:
            host, _, port = str(address).rpartition(":") if isinstance(address, str) else ("", "", "")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"TF_CONFIG: {address!r} in cluster.{kind} is not a host:port address")
            if address in seen:
                raise ConfigError(f"TF_CONFIG: {address} is named twice; each worker needs its own port")
            seen.add(address)
    if len(cluster.get("chief") or []) > 1:
        raise ConfigError("TF_CONFIG: a cluster has at most one chief")
    task = spec.get("task")
    kind = task.get("type") if isinstance(task, dict) else None
    index = task.get("index", 0) if isinstance(task, dict) else None
    if kind not in TRAINING_TASKS or not cluster.get(kind):
        raise ConfigError(f"TF_CONFIG: task.type must name a task of the cluster "
                          f"({', '.join(k for k in TRAINING_TASKS if cluster.get(k))}), got {kind!r}")
    count = len(cluster[kind])
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise ConfigError(f"TF_CONFIG: task.index must be from 0 to {count - 1} (the cluster has {count} "
                          f"{kind} addresses), got {index!r}")
    return task_in(cluster, kind, index)
