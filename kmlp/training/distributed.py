"""Training on several machines: ``tf.distribute.MultiWorkerMirroredStrategy``, driven by the same
Keras callbacks as ``model.fit``.

Keras 3's ``model.fit`` does not run under a MultiWorkerMirroredStrategy: the first step fails with
``Attempt to convert a value (PerReplica:{...}) ... to a Tensor`` (keras-team/keras#20585). :func:`fit`
runs the same training on TensorFlow's own distributed engine, as its custom training loop guide
does: ``strategy.experimental_distribute_dataset`` gives every replica its share of each global
minibatch, ``strategy.run`` runs the step on every replica, ``tf.nn.compute_average_loss`` scales
each replica's loss by the global batch, and the Keras optimizer all-reduces the gradients and
updates the weights. Around it is fit's loop: a ``keras.callbacks.CallbackList`` holding the model
gets the train, epoch, batch and test hooks with ``loss`` and ``val_loss`` in the logs, and
``model.stop_training`` stops it, so rate schedules, ``LossCurve``, ``ElapsedTime``, ``CSVLogger``,
``BackupAndRestore``, ``TerminateOnNaN`` and any other Keras callback work unchanged.

Where a multi-worker training differs from one process:

- One Keras "batch" is one compiled call of ``plan.steps_per_call`` optimizer steps (a ``tf.range``
  loop over the distributed iterator), as a chunk is for ``CharMLP.train_step``. The call is not
  compiled with XLA: it holds the collective all-reduce of the gradients, which XLA does not
  compile on a CPU.
- R-Drop doubles each replica's share; the loss per example is the mean cross-entropy of its two
  passes plus ``rdrop`` times their divergence, which averages to ``CharMLP.compute_loss``'s loss.
- Batch normalisation normalises each replica's share by its own statistics, as ``fit`` does under
  ``MirroredStrategy``; the moving statistics are averaged over the replicas at the end of every
  epoch (the moving mean is linear in the batch means, so this equals averaging after every step),
  so every worker ends each epoch, its backup and the run with the same model.
- ``model.stop_training`` set on any worker (by ``TerminateOnNaN``, a time limit, ...) stops every
  worker after the same call, so that none waits for the others forever.
- Dropout draws the same masks on every replica for its share of a minibatch (each replica's seed
  generator is a copy of one), as ``fit`` under ``MirroredStrategy`` does.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from contextlib import contextmanager

import keras
import tensorflow as tf

from kmlp.errors import ClusterError, RunError
from kmlp.training.cluster import Task, read_tf_config, task_in


def multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """The strategy of the cluster ``TF_CONFIG`` describes (checked first, see
    :func:`kmlp.training.cluster.read_tf_config`): a copy of the model on every worker's devices (its GPUs,
    else its CPU), each minibatch split between them. Blocks until every worker has started.

    TensorFlow takes SIGTERM over for its preemption notices, which kmlp does not use; the handler
    that was there before (the command line's: stop as Ctrl-C does) is put back.
    """
    read_tf_config()
    if threading.current_thread() is not threading.main_thread():
        return tf.distribute.MultiWorkerMirroredStrategy()
    handler = signal.getsignal(signal.SIGTERM)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    if handler is not None:  # (None: set outside Python, left as it is)
        signal.signal(signal.SIGTERM, handler)
    return strategy


def is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def task_of(strategy) -> Task | None:
    """This process's task in ``strategy``'s cluster; None outside a cluster of several workers."""
    if not is_multi_worker(strategy):
        return None
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict() if resolver else {}
    if not resolver or not resolver.task_type or not cluster:
        return None
    return task_in(cluster, resolver.task_type, int(resolver.task_id or 0))


def worker_name(strategy) -> str | None:
    """None for the process that writes the run (one process, or the chief), else its task's name
    (``worker-1``), under which it keeps its lock and backup beside the run."""
    task = task_of(strategy)
    return None if task is None or task.chief else task.name


def agree_on_start(strategy, backup, epoch: int, expected: dict, log=print) -> int:
    """The epoch every worker starts at, given this one's backup at ``epoch``, once the workers are
    checked to run one training: the same configuration, plan and names file (by its content;
    ``expected``, see :func:`kmlp.training.backup.identity`). See :func:`start_of_all`."""
    if not is_multi_worker(strategy) or strategy.num_replicas_in_sync == 1:
        return epoch
    training = {key: value for key, value in expected.items() if key != "data"}  # (paths differ by machine)
    mine = [epoch, int(hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:15], 16)]

    def everyones():
        return strategy.gather(strategy.run(tf.constant, args=([mine], tf.int64)), axis=0)

    with _lost_workers_reported():
        everyone = [tuple(row) for row in tf.function(everyones)().numpy().tolist()]
    return start_of_all(backup, epoch, everyone, expected["plan"], log)


def start_of_all(backup, epoch: int, everyone: list[tuple[int, int]], plan: dict, log=print) -> int:
    """The epoch to start at, given ``(epoch, training)`` of every worker (``training``: a hash of
    what it was asked to train) and this worker's ``backup`` at ``epoch``.

    A kill can stop one worker after it backed up an epoch and another before it did; the one ahead
    then goes back one epoch (BackupAndRestore keeps the previous one beside the last). Different
    trainings, or backups further apart, are refused.
    """
    if len({training for _, training in everyone}) > 1:
        raise RunError("the workers were given different trainings (options, plan or names file); "
                       "start every worker with the same command and the same names file")
    start = min(epochs for epochs, _ in everyone)
    if epoch == start:
        return epoch
    if epoch == start + 1 and backup.go_back(start, start * plan["steps_per_call"] * plan["calls_per_epoch"]):
        log(f"going back to epoch {start}, the last one every worker backed up")
        return start
    raise RunError(f"{backup.path}: holds epoch {epoch}, while another worker's backup holds epoch "
                   f"{start}; they are not of one training. Delete every worker's backup to start over")


def fit(setup, callbacks, validation=None, start_epoch: int = 0, verbose: int = 0) -> keras.callbacks.History:
    """Train ``setup`` (a :class:`kmlp.training.setup.Setup` whose strategy is a MultiWorkerMirroredStrategy)
    as ``setup.model.fit`` would: ``plan.epochs`` epochs of ``plan.calls_per_epoch`` calls, each of
    ``plan.steps_per_call`` optimizer steps at the global batch ``config.batch_size``, from
    ``start_epoch``, validating on ``validation`` (a dataset of minibatches) after each epoch.

    Ctrl-C or SIGTERM on any worker stops every worker after the same call (see
    :func:`_signals_held`), each with ``KeyboardInterrupt`` (the signal's own handler on the worker
    that got it); a worker that stops or cannot be reached raises :class:`ClusterError` on the others.
    """
    model, plan, strategy = setup.model, setup.plan, setup.strategy
    steps = _Steps(model, strategy, setup.config.batch_size)
    first_step = start_epoch * plan.steps_per_epoch
    train = iter(_distribute(strategy, setup.train_dataset(first_step, steps_per_call=1)))
    validation = _distribute(strategy, validation) if validation is not None else None
    callbacks = keras.callbacks.CallbackList(list(callbacks), add_history=True, add_progbar=verbose != 0,
                                             verbose=verbose, epochs=plan.epochs,
                                             steps=plan.calls_per_epoch, model=model)
    with _lost_workers_reported(), _signals_held() as signals:
        with strategy.scope():  # before BackupAndRestore loads the optimizer's state into it
            model.optimizer.build(model.trainable_variables)
        model.stop_training = False
        callbacks.on_train_begin()
        epoch_logs = None
        for epoch in range(model._initial_epoch or start_epoch, plan.epochs):  # as fit: BackupAndRestore's
            callbacks.on_epoch_begin(epoch)
            total = 0.0
            for call in range(plan.calls_per_epoch):
                callbacks.on_train_batch_begin(call)
                total += float(steps.train(train, tf.constant(plan.steps_per_call)))
                logs = {"loss": total / (call + 1)}  # the mean over the epoch so far, as fit logs it
                callbacks.on_train_batch_end(call, logs)
                if steps.agree_to_stop(signals):
                    break
            steps.average_statistics()
            epoch_logs = dict(logs)
            if validation is not None:
                epoch_logs["val_loss"] = _validate(steps, validation, callbacks)
            callbacks.on_epoch_end(epoch, epoch_logs)
            if steps.agree_to_stop(signals):
                break
    model.optimizer.finalize_variable_values(model.trainable_weights)
    callbacks.on_train_end(logs=epoch_logs)
    return model.history


@contextmanager
def _signals_held():
    """Hold SIGINT and SIGTERM (Ctrl-C, kill, a scheduler) until every worker has finished the same
    call, so that they all stop there together: a worker stopping alone leaves the others waiting
    for it. TensorFlow's own SIGTERM handler (its preemption notice) is out of play meanwhile. The
    signals received are listed in what it yields; when it ends, each is raised again, to the
    handlers that were there before."""
    if threading.current_thread() is not threading.main_thread():  # only it can take signals
        yield []
        return
    received = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


@contextmanager
def _lost_workers_reported():
    """Turn the error a collective operation raises when another worker has gone into one line."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError) as e:
        lines = [line.strip() for line in str(e.message).splitlines() if line.strip()]
        reason = next((line.split("aborted by: ", 1)[-1] for line in lines if "aborted by: " in line),
                      lines[-1] if lines else type(e).__name__)
        raise ClusterError(f"another worker stopped or cannot be reached ({reason}); once every worker "
                           f"is up, the same command with --resume on each continues from the last "
                           f"epoch all of them backed up") from None


def _distribute(strategy, dataset):
    """``dataset`` split between the replicas: every worker reads it whole and keeps its shares of
    each minibatch (kmlp's datasets come from memory, not from files to divide between workers)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def _validate(steps, dataset, callbacks) -> float:
    callbacks.on_test_begin()
    callbacks.on_test_batch_begin(0)
    logs = {"loss": float(steps.evaluate(dataset))}
    callbacks.on_test_batch_end(0, logs)
    callbacks.on_test_end(logs)
    return logs["loss"]


class _Steps:
    """The compiled functions of a multi-worker training: train steps, evaluation and the collective
    bookkeeping between them, each run by every worker at the same point."""

    def __init__(self, model, strategy, global_batch: int):
        self.model, self.strategy, self.global_batch = model, strategy, global_batch
        self.statistics = [v for v in model.non_trainable_weights if v.dtype.startswith("float")]
        self.train = tf.function(self._train)
        self.evaluate = tf.function(self._evaluate)
        self._average = tf.function(self._average_statistics)
        self._sum_flags = tf.function(self._sum_over_replicas)

    def _per_example_loss(self, y, logits, training: bool):
        """Each example's loss: with R-Drop in training, the mean cross-entropy of its two passes
        (rows i and B + i) plus ``rdrop`` times their divergence (see ``CharMLP.compute_loss``)."""
        losses = self.model.loss.call(y, logits)  # the compiled loss, per example
        rdrop = getattr(self.model, "rdrop", 0.0)
        if training and rdrop:
            losses = tf.reduce_mean(tf.reshape(losses, [2, -1]), axis=0)
            losses += rdrop * self.model.rdrop_divergence(logits)
        return losses

    def _step(self, x, y):
        model = self.model
        if getattr(model, "rdrop", 0.0):
            x, y = model.rdrop_batch(x, y)
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.nn.compute_average_loss(self._per_example_loss(y, logits, training=True),
                                              global_batch_size=self.global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def _train(self, iterator, steps):
        """``steps`` optimizer steps on the next ``steps`` global minibatches; their mean loss.

        Each replica adds up its own losses, summed over the replicas once, at the end: one
        collective less per step than a sum after every step.
        """
        total = self.strategy.run(_zero)
        for _ in tf.range(steps):
            x, y = next(iterator)
            total = self.strategy.run(self._step_and_add, args=(total, x, y))
        return self.strategy.reduce("SUM", total, axis=None) / tf.cast(steps, tf.float32)

    def _step_and_add(self, total, x, y):
        return total + self._step(x, y)

    def _evaluate(self, dataset):
        """The mean loss over a finite distributed dataset, every example weighted equally."""

        def sums(x, y):
            losses = self._per_example_loss(y, self.model(x, training=False), training=False)
            return tf.stack([tf.reduce_sum(tf.cast(losses, tf.float64)), tf.cast(tf.size(y), tf.float64)])

        totals = tf.zeros([2], tf.float64)
        for x, y in dataset:
            totals += self.strategy.reduce("SUM", self.strategy.run(sums, args=(x, y)), axis=None)
        return totals[0] / tf.maximum(totals[1], 1.0)

    def average_statistics(self) -> None:
        """Set every replica's normalisation statistics to their mean over all replicas."""
        if self.statistics:
            self._average()

    def _average_statistics(self):
        def replica():
            local = [tf.identity(v.value) for v in self.statistics]  # this replica's copies
            means = tf.distribute.get_replica_context().all_reduce("MEAN", local)
            for variable, mean in zip(self.statistics, means):
                variable.assign(mean)

        self.strategy.run(replica)

    def agree_to_stop(self, signals: list) -> bool:
        """Whether to stop here: True once any worker's callbacks set ``model.stop_training`` (which
        is then set on every worker). If any worker holds a signal (see :func:`_signals_held`),
        every worker raises ``KeyboardInterrupt`` here, the one that got it the signal's own."""
        stopping, interrupted = self._sum_flags(tf.constant([float(self.model.stop_training),
                                                                  float(bool(signals))])).numpy()
        if interrupted:  # (on leaving _signals_held, a held signal goes to its own handler)
            raise KeyboardInterrupt("interrupted" if signals else "another worker was interrupted")
        if stopping:
            self.model.stop_training = True
        return bool(stopping)

    def _sum_over_replicas(self, flags):
        """The sum of ``flags`` over all replicas."""
        return self.strategy.reduce("SUM", self.strategy.run(tf.identity, args=(flags,)), axis=None)


def _zero():
    return tf.constant(0.0)
