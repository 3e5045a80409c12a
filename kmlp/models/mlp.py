"""Model: the character-level MLP of Bengio et al. (2003), "A Neural Probabilistic Language Model".

    context indices [B, block_size]
      -> Embedding(vocab_size, n_embd)          one learned vector per character
      -> Reshape(block_size * n_embd)           a view of the embeddings, not a concatenation
      -> Dense(n_hidden, tanh)                  (n_layers of them)
      -> Dense(vocab_size)                      logits of the next character

At the lecture's size (vocab 27, block_size 3, n_embd 10, n_hidden 200) this is 11,897 parameters.
:func:`build_model` builds the lecture's hierarchical model too (``arch="hierarchical"``, see
:mod:`kmlp.models.hierarchical`), with the same hidden layers and the same training step.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf
from keras import layers

from kmlp.config import check_model_options, check_model_size, check_optimizer_options, check_positive_int
from kmlp.models.hierarchical import fused_levels
from kmlp.shapes import FUSE


@keras.saving.register_keras_serializable(package="kmlp")
class CharMLP(keras.Model):
    """A functional model whose training step also accepts a *chunk* of minibatches.

    ``fit`` on ordinary ``(context [B, T], next [B])`` minibatches works as for any Keras model. Given
    a chunk ``(context [K, B, T], next [K, B])`` (see ``NamesData.dataset(..., steps_per_call=K)``),
    one call runs K optimizer steps in a loop inside the compiled graph. With ``jit_compile=True`` the
    whole loop becomes one XLA computation, which removes the per-step overhead (host round trip,
    input pipeline, executor) that dominates the cost of a model this small.

    ``rdrop`` > 0 trains with R-Drop (Liang et al. 2021, "R-Drop: Regularized Dropout for Neural
    Networks"): every minibatch goes through the model twice, with different dropout masks, and the
    loss gains ``rdrop`` times the symmetric KL divergence between the two predictions, which pulls
    the network towards predictions that do not depend on which units were dropped. The layers up to
    the first dropout are the same for both passes and run once (see :class:`TwoPasses`); the rest of
    a step costs twice as much. The training loss Keras logs includes the added term.
    """

    def __init__(self, *args, rdrop: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.rdrop = float(rdrop)

    def get_config(self):
        return {**super().get_config(), "rdrop": self.rdrop}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        rdrop = config.pop("rdrop", 0.0)
        model = super().from_config(config, custom_objects=custom_objects)
        model.rdrop = float(rdrop)
        return model

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if training and self.rdrop:
            loss = loss + self.rdrop * tf.reduce_mean(self.rdrop_divergence(y_pred))
        return loss

    @staticmethod
    def rdrop_divergence(y_pred):
        """Per example of a doubled batch (see :meth:`rdrop_batch`: rows i and B + i are one example
        under two dropout masks), half the symmetric KL divergence between its two predictions."""
        log_p, log_q = tf.split(tf.nn.log_softmax(y_pred), 2, axis=0)
        return 0.5 * tf.reduce_sum((tf.exp(log_p) - tf.exp(log_q)) * (log_p - log_q), axis=-1)

    def rdrop_batch(self, x, *targets):
        """The inputs and targets of a training step with R-Drop: the targets (and sample weights,
        or None) stacked on themselves along the batch axis, and the inputs too unless the graph does
        that itself (see :class:`TwoPasses`)."""
        if not self.rdrop:
            return (x, *targets)
        twice = lambda t: None if t is None else tf.concat([t, t], axis=0)
        forks = any(isinstance(layer, TwoPasses) for layer in self.layers)
        return (x if forks else twice(x), *map(twice, targets))

    @tf.autograph.experimental.do_not_convert  # plain graph code: converting it only costs tracing time
    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if x.shape.rank != 3 or sample_weight is not None:
            return super().train_step(self.rdrop_batch(x, y, sample_weight))
        steps = tf.shape(x)[0]

        def one_step(i):
            xb, yb = self.rdrop_batch(x[i], y[i])
            with tf.GradientTape() as tape:
                y_pred = self(xb, training=True)
                loss = self._compute_loss(x=xb, y=yb, y_pred=y_pred, training=True)
                self._loss_tracker.update_state(loss, sample_weight=tf.shape(yb)[0])
            grads = tape.gradient(loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            return i + 1

        tf.while_loop(lambda i: i < steps, one_step, (tf.constant(0),))
        return self.get_metrics_result()


@keras.saving.register_keras_serializable(package="kmlp")
class TwoPasses(layers.Layer):
    """R-Drop's fork: in training, the batch stacked on itself (rows i and B + i are one example), so
    the layers after it see every example twice, under different dropout masks; otherwise the identity.

    :func:`build_model` puts it just before the first dropout. What comes before is the same for both
    passes, so it runs once, with the same gradients as when the input is stacked: batch
    normalisation's statistics over a batch stacked on itself are those of the batch, and the gradient
    sums over both passes either way. In the ``best`` model that is the first of three hidden layers.
    (Keras's Adam updates the embedding from its gradient per lookup, a ``tf.IndexedSlices`` with
    one row per lookup, and half as many lookups carry the same sum: its embedding updates, and so
    the trained model, differ somewhat from stacking the input; SGD's are the same.)

    >>> x = TwoPasses()(x, training=True)  # [2B, ...] in training, x itself otherwise
    """

    def call(self, x, training=None):
        return tf.concat([x, x], axis=0) if training else x

    def compute_output_shape(self, input_shape):
        return input_shape


def build_model(vocab_size: int = 27, block_size: int = 3, n_embd: int = 10, n_hidden: int = 200,
                n_layers: int = 1, dropout: float = 0.0, norm: str = "none",
                init: str = "glorot", seed: int | None = None, rdrop: float = 0.0,
                precision: str = "float32", name: str = "kmlp", arch: str = "mlp", fuse: int = FUSE,
                norm_momentum: float = 0.99, norm_epsilon: float = 1e-3) -> keras.Model:
    """The model as a Keras functional model (uncompiled; see :func:`compile_model`).

    ``arch`` ``mlp`` is the flat MLP above; ``hierarchical`` fuses ``fuse`` consecutive positions at
    each of ``n_layers`` levels (see :mod:`kmlp.models.hierarchical`; ``block_size`` must be
    ``fuse ** n_layers``). ``n_layers`` hidden tanh layers of ``n_hidden`` units each; ``norm``
    ("batch" or "layer"; "none" for none) puts a normalisation before each tanh (as the lecture's
    batchnorm part does), with ``norm_epsilon`` added to the variance and batch norm's moving
    statistics keeping ``norm_momentum`` of themselves at each step, and ``dropout`` a dropout after
    it. ``init`` is how the dense layers start (the embedding is N(0, 1) in all): ``glorot`` (Keras's
    scaled uniform, zero biases); ``normal`` (every weight and bias drawn from N(0, 1) like the
    lecture's ``torch.randn``, which saturates the tanh at first and ends worse); ``kaiming`` (the
    lecture's part 3: hidden weights N(0, 1) times the tanh's gain 5/3 over sqrt(fan_in), logits'
    weights N(0, 1) times 0.01, zero biases); ``fan_in`` (part 5: N(0, 1) over sqrt(fan_in), the
    logits' times 0.1, zero biases). ``rdrop`` is the weight of R-Drop's consistency term
    (see :class:`CharMLP`; it needs dropout, and adds a :class:`TwoPasses` before the first dropout).
    ``precision`` is the Keras dtype policy of every layer but the logits: ``float32``, or
    ``mixed_bfloat16`` (weights in float32, matrix products in bfloat16, which oneDNN runs faster on
    CPUs with bfloat16 instructions such as AVX512_BF16; compile without XLA to get that). As in
    Keras's mixed precision, batch normalisation computes in float32 and the logits layer is float32,
    so the logits, the softmax and the loss are float32. The policy is saved with each layer: a loaded
    model computes as the trained one did. The other defaults are the lecture's model. A value out of
    range, or a model whose weights alone exceed this machine's memory, raises
    :class:`kmlp.config.ConfigError`.
    """
    check_positive_int(vocab_size, "vocab_size")
    check_model_options(block_size=block_size, n_embd=n_embd, n_hidden=n_hidden, n_layers=n_layers,
                        dropout=dropout, rdrop=rdrop, norm=norm, init=init, precision=precision, arch=arch,
                        fuse=fuse, norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)
    check_model_size(vocab_size, block_size, n_embd, n_hidden, n_layers, norm, arch=arch,
                     fuse=fuse)  # before TensorFlow allocates
    weights, logits_weights, biases = _initializers(init, seed)
    body = {"dtype": precision}  # every layer but the logits (each casts its input to its policy)
    use_norm = norm in ("batch", "layer")
    norm_layer = {"batch": functools.partial(layers.BatchNormalization, momentum=norm_momentum),
                  "layer": layers.LayerNormalization}.get(norm)

    def hidden(x, number):
        suffix = "" if n_layers == 1 and arch == "mlp" else f"_{number}"
        x = layers.Dense(n_hidden, use_bias=not use_norm, kernel_initializer=weights(number),
                         bias_initializer=biases(number), activation=None if use_norm else "tanh",
                         name=f"hidden{suffix}", **body)(x)
        if use_norm:
            x = norm_layer(epsilon=norm_epsilon, name=f"{norm}_norm{suffix}", **body)(x)
            x = layers.Activation("tanh", name=f"tanh{suffix}", **body)(x)
        if rdrop and number == 1:
            x = TwoPasses(name="rdrop_fork", **body)(x)
        if dropout:
            # One seed per layer: layers seeded alike would drop the same units in every layer.
            x = layers.Dropout(dropout, seed=None if seed is None else seed + 199 + number,
                               name=f"dropout{suffix}", **body)(x)
        return x

    context = keras.Input(shape=(block_size,), dtype="int32", name="context")
    x = layers.Embedding(vocab_size, n_embd, name="embedding",
                         embeddings_initializer=keras.initializers.RandomNormal(
                             stddev=1.0, seed=seed), **body)(context)
    if arch == "hierarchical":
        x = fused_levels(x, block_size, n_embd, n_hidden, n_layers, fuse, hidden, body)
    else:
        x = layers.Reshape((block_size * n_embd,), name="flatten", **body)(x)
        for number in range(1, n_layers + 1):
            x = hidden(x, number)
    logits = layers.Dense(vocab_size, kernel_initializer=logits_weights, bias_initializer=biases(0),
                          name="logits", dtype="float32")(x)
    return CharMLP(context, logits, name=name, rdrop=rdrop)


TANH_GAIN = 5 / 3  # the gain PyTorch's Kaiming initialisation gives a tanh layer
LOGITS_SCALE = {"kaiming": 0.01, "fan_in": 0.1}  # the lecture's parts 3 and 5 shrink the last layer


def _initializers(init: str, seed: int | None):
    """``(hidden weights of layer i, logits' weights, biases of layer i)`` for ``init`` (the logits
    are layer 0): each layer draws from its own seed."""
    def seeded(offset):
        return None if seed is None else seed + offset

    def fan_in_normal(scale, i):
        return keras.initializers.VarianceScaling(scale=scale, mode="fan_in",
                                                  distribution="untruncated_normal", seed=seeded(i))

    def biases(i):
        if init == "normal":
            return keras.initializers.RandomNormal(stddev=1.0, seed=seeded(100 + i))
        return "zeros"

    if init in ("glorot", "normal"):
        def weights(i):
            if init == "normal":
                return keras.initializers.RandomNormal(stddev=1.0, seed=seeded(i))
            return keras.initializers.GlorotUniform(seed=seeded(i))
        return weights, weights(0), biases
    gain = TANH_GAIN if init == "kaiming" else 1.0
    if init == "kaiming":  # (part 3's logits are N(0, 1) times the scale, not over sqrt(fan_in))
        logits = keras.initializers.RandomNormal(stddev=LOGITS_SCALE[init], seed=seeded(0))
    else:
        logits = fan_in_normal(LOGITS_SCALE[init] ** 2, 0)
    return (lambda i: fan_in_normal(gain ** 2, i)), logits, biases


def make_optimizer(name: str = "sgd", lr: float = 0.1, weight_decay: float = 0.0,
                   clipnorm: float | None = None) -> keras.optimizers.Optimizer:
    """A Keras optimizer by name: ``sgd`` (the lecture's), ``adam`` or ``adamw``.

    ``weight_decay`` is decoupled weight decay (Loshchilov and Hutter), which every Keras optimizer
    applies, so ``adam`` with it is ``adamw``; ``adamw`` without it is ``adam``.
    """
    check_optimizer_options(name, lr, weight_decay)
    kwargs = {"learning_rate": float(lr)}
    if clipnorm:
        kwargs["clipnorm"] = clipnorm
    if weight_decay or name == "adamw":  # (AdamW's own default is not 0)
        kwargs["weight_decay"] = float(weight_decay)
    return {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam,
            "adamw": keras.optimizers.AdamW}[name](**kwargs)


def compile_model(model: keras.Model, optimizer: keras.optimizers.Optimizer | str = "sgd",
                  lr: float = 0.1, steps_per_execution: int = 1, jit_compile: bool | str = "auto"
                  ) -> keras.Model:
    """Compile for next-character prediction: cross-entropy on the logits."""
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, lr)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution, jit_compile=jit_compile)
    return model
