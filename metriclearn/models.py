"""Flax Linen encoders and embedding heads that metric-learning research starts from.

Every module is called as ``module.apply(variables, x, train=bool)``: ``train=True``
uses batch statistics in BatchNorm and updates the running averages (pass
``mutable=["batch_stats"]``), ``train=False`` (the default) uses the running averages.
Image encoders take NHWC floats, and ``[N, H, W]`` grayscale gets a channel axis;
integer images are cast to float32 unscaled. Backbones return ``[N, F]`` features, an
``EmbeddingHead`` projects them to the embedding (optionally L2-normalised), and an
``Encoder`` composes the two.

A siamese ("twin") network is one encoder applied to both inputs, so the weights are
shared by construction: ``Siamese`` does it in one pass (both halves in one batch, so
BatchNorm sees both and updates once), or apply one encoder twice:

>>> enc = Encoder(MLPEncoder(hidden=(32,)), EmbeddingHead(8))
>>> x1, x2 = jnp.ones((2, 16)), jnp.zeros((2, 16))
>>> variables = enc.init(jax.random.key(0), x1)
>>> e1, e2 = enc.apply(variables, x1), enc.apply(variables, x2)  # one set of weights
>>> e1.shape, e2.shape
((2, 8), (2, 8))

BatchNorm layers take an ``axis_name`` so that under ``pmap``/``shard_map`` the batch
statistics are averaged over every device (exactly the single-device statistics of the
global batch), and a ``dtype`` for the computation (e.g. ``jnp.bfloat16`` on
accelerators; parameters stay float32, embeddings come out float32).

A tree of the modules of :data:`REGISTRY` is written as JSON by :func:`describe` and
rebuilt by :func:`build`, which looks class names up and never imports anything (this
is how ``metriclearn.inference`` stores a model).

**Flax NNX.** Each architecture is defined once, in Linen, and reaches NNX users
through Flax's own bridge: :func:`nnx_encoder` wraps any of these modules in an
:class:`NNXEncoder` (a ``flax.nnx.bridge.ToNNX``), an ordinary ``flax.nnx.Module``
called as ``m(x)`` in the mode that ``m.train()`` / ``m.eval()`` set, usable alone or
as a submodule of the user's own NNX model. One definition rather than a second NNX
copy of each architecture, because then the two cannot drift apart: an NNX encoder's
variables are the Linen module's, path for path (``nnx.state(m, nnx.Param)`` holds
what ``variables["params"]`` holds), so weights move between the two without
renaming, ``nnx_encoder(module, rngs=key, ...)`` starts from exactly the weights of
``module.init(key, ...)``, both compute the same thing, and an exported NNX encoder
is described by the same registry.

>>> from flax import nnx
>>> conv4 = nnx_encoder(
...   Encoder(ConvEncoder(filters=8), EmbeddingHead(4)),
...   rngs=nnx.Rngs(0), example=jnp.zeros((1, 16, 16)))
>>> conv4.eval()  # BatchNorm on its running averages
>>> conv4(jnp.ones((2, 16, 16))).shape
(2, 4)

``metriclearn.training`` and ``metriclearn.inference`` take a Linen module or any
``flax.nnx.Module`` (the user's own, or one from :func:`nnx_encoder`): :func:`as_linen`
presents an NNX module with Linen's calling convention (an :class:`NNXAdapter`), and
:func:`with_variables` puts trained variables back into an NNX module.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import unfreeze
from flax.nnx.bridge import variables as bridge_variables

from metriclearn import distances
from metriclearn.initializers import init_proxies

__all__ = [
  "FLOAT_DTYPES",
  "REGISTRY",
  "ConvEncoder",
  "EmbeddingHead",
  "Encoder",
  "KochTower",
  "MLPEncoder",
  "NNXAdapter",
  "NNXEncoder",
  "Proxies",
  "ResNet",
  "ResidualBlock",
  "Siamese",
  "as_images",
  "as_linen",
  "as_variables",
  "build",
  "describe",
  "max_pool_2x2",
  "nnx_encoder",
  "with_variables",
]

Dtype = Any


def as_images(x: jax.Array) -> jax.Array:
  """NHWC float images: ``[N, H, W]`` gets a channel axis, integers become float32."""
  x = jnp.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(
      f"x must be [N, H, W, C] images (or [N, H, W] grayscale), got shape "
      f"{tuple(x.shape)}."
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  return x


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, ``'VALID'``: ``nn.max_pool(x, (2, 2), (2, 2))``.

  Written as a crop, a reshape and a max: the same values, and on XLA:CPU a training
  step of Conv-4 1.26x faster than ``reduce_window`` with its select-and-scatter
  gradient (``benchmarks/pooling.md``). Where a
  window holds tied maxima the gradient is shared among them instead of given to the
  first.
  """
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _batch_norm(module: nn.Module, train: bool, x: jax.Array, **kwargs) -> jax.Array:
  """BatchNorm in float32 (statistics and normalisation), output in ``module.dtype``;
  statistics averaged over ``module.axis_name`` when it is set."""
  y = nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    axis_name=module.axis_name,
    dtype=jnp.float32,
    **kwargs,
  )(x.astype(jnp.float32))
  return y.astype(module.dtype)


class MLPEncoder(nn.Module):
  """Multi-layer perceptron on flattened inputs: Dense, (BatchNorm), ReLU per layer.

  For vectors and small images (``[N, ...]`` is flattened to ``[N, F]``).

  Attributes:
    hidden: the widths of the hidden layers; the output has ``hidden[-1]`` features.
    batch_norm: BatchNorm after each Dense.
    axis_name: BatchNorm statistics averaged over this mapped axis.
    dtype: the computation dtype.

  >>> m, x = MLPEncoder(hidden=(32, 16)), jnp.ones((4, 8, 8))
  >>> m.apply(m.init(jax.random.key(0), x), x).shape
  (4, 16)
  """

  hidden: Sequence[int] = (256, 256)
  batch_norm: bool = False
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 2:
      raise ValueError(f"x must be [N, ...] with a batch axis, got {tuple(x.shape)}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.Dense(width, use_bias=not self.batch_norm, dtype=self.dtype)(x)
      if self.batch_norm:
        x = _batch_norm(self, train, x)
      x = nn.relu(x)
    return x


class ConvEncoder(nn.Module):
  """The 4-block few-shot tower: [Conv 3x3, BatchNorm, ReLU, MaxPool 2x2] x 4.

  64 filters per block (Vinyals et al. 2016, Snell et al. 2017): 84x84 images give
  5x5x64 = 1600 features, 28x28 give 1x1x64 = 64.

  Attributes:
    filters: filters per block.
    num_blocks: number of blocks.
    axis_name: BatchNorm statistics averaged over this mapped axis.
    dtype: the computation dtype.

  >>> m, x = ConvEncoder(), jnp.ones((2, 84, 84, 3))
  >>> variables = jax.eval_shape(m.init, jax.random.key(0), x)  # shapes only
  >>> jax.eval_shape(m.apply, variables, x).shape
  (2, 1600)

  References:
    Vinyals et al. Matching Networks for One Shot Learning. NeurIPS 2016; Snell,
    Swersky, Zemel. Prototypical Networks for Few-shot Learning. NeurIPS 2017.
  """

  filters: int = 64
  num_blocks: int = 4
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = as_images(x)
    for _ in range(self.num_blocks):
      x = nn.Conv(self.filters, (3, 3), padding="SAME", dtype=self.dtype)(x)
      x = _batch_norm(self, train, x)
      x = nn.relu(x)
      x = max_pool_2x2(x)
    return x.reshape(x.shape[0], -1)


class KochTower(nn.Module):
  """The siamese convolutional tower of Koch et al. 2015 (one twin).

  Conv 64@10x10, ReLU, MaxPool 2x2; Conv 128@7x7, ReLU, MaxPool; Conv 128@4x4, ReLU,
  MaxPool; Conv 256@4x4, ReLU; Dense 4096, sigmoid. On 105x105 Omniglot images
  (``padding='VALID'``, the paper's) the feature map before the dense layer is
  6x6x256. ``VALID`` needs at least 65x65 inputs; for downscaled inputs (e.g. 28x28)
  use ``padding='SAME'`` and, if wanted, narrower ``features``/``hidden``. The twin
  embeddings feed ``metriclearn.losses.weighted_l1_loss``.

  Attributes:
    features: filters of the four conv layers.
    kernels: their kernel sizes.
    hidden: width of the sigmoid dense layer (the embedding).
    padding: 'VALID' (the paper) or 'SAME'.
    dtype: the computation dtype.

  >>> m, x = KochTower(), jnp.ones((2, 105, 105))
  >>> variables = jax.eval_shape(m.init, jax.random.key(0), x)  # shapes only
  >>> variables["params"]["Dense_0"]["kernel"].shape  # 6 * 6 * 256 -> 4096
  (9216, 4096)

  References:
    Koch, Zemel, Salakhutdinov. Siamese Neural Networks for One-shot Image
    Recognition. ICML Deep Learning Workshop 2015.
  """

  features: Sequence[int] = (64, 128, 128, 256)
  kernels: Sequence[int] = (10, 7, 4, 4)
  hidden: int = 4096
  padding: str = "VALID"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no BatchNorm or dropout in the paper's tower
    x = as_images(x)
    if len(self.features) != len(self.kernels):
      raise ValueError(
        f"features {tuple(self.features)} and kernels {tuple(self.kernels)} must "
        "have the same length."
      )
    shape_in = tuple(x.shape)
    for i, (width, k) in enumerate(zip(self.features, self.kernels, strict=True)):
      if self.padding == "VALID" and min(x.shape[1:3]) < k:
        raise ValueError(
          f"input {shape_in} is too small for the VALID tower: layer {i + 1} sees "
          f"{tuple(x.shape[1:3])} < its {k}x{k} kernel; use >= 65x65 inputs or "
          "padding='SAME'."
        )
      x = nn.Conv(width, (k, k), padding=self.padding, dtype=self.dtype)(x)
      x = nn.relu(x)
      if i < len(self.features) - 1:
        x = max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    return nn.sigmoid(nn.Dense(self.hidden, dtype=self.dtype)(x))


class ResidualBlock(nn.Module):
  """ResNet basic block: two 3x3 convs with BatchNorm (1x1 projected shortcut)."""

  filters: int
  strides: int = 1
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = dict(use_bias=False, dtype=self.dtype)
    y = nn.Conv(self.filters, (3, 3), self.strides, padding=1, **conv)(x)
    y = nn.relu(_batch_norm(self, train, y))
    y = nn.Conv(self.filters, (3, 3), padding=1, **conv)(y)
    # zero-initialised last scale: each block starts as the identity (Goyal et al.)
    y = _batch_norm(self, train, y, scale_init=nn.initializers.zeros)
    if x.shape != y.shape:
      x = nn.Conv(self.filters, (1, 1), self.strides, **conv)(x)
      x = _batch_norm(self, train, x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A small-image ResNet; the default is the ResNet-18 layout for 32x32 to 64x64.

  Stem Conv 3x3 (stride 1, no max-pool, as for CIFAR), BatchNorm, ReLU; stages of
  basic blocks with ``width * 2**i`` filters, stride 2 from the second stage on;
  global average pooling to ``[N, width * 2**(len(stage_sizes) - 1)]`` (512).

  Attributes:
    stage_sizes: blocks per stage ((2, 2, 2, 2): ResNet-18).
    width: filters of the first stage.
    axis_name: BatchNorm statistics averaged over this mapped axis.
    dtype: the computation dtype.

  >>> m, x = ResNet(), jnp.ones((2, 32, 32, 3))
  >>> variables = jax.eval_shape(m.init, jax.random.key(0), x)  # shapes only
  >>> jax.eval_shape(m.apply, variables, x).shape
  (2, 512)

  References:
    He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016.
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = as_images(x)
    x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(_batch_norm(self, train, x))
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        x = ResidualBlock(
          self.width * 2**i,
          strides=2 if i > 0 and j == 0 else 1,
          axis_name=self.axis_name,
          dtype=self.dtype,
        )(x, train)
    return jnp.mean(x, axis=(1, 2))


class EmbeddingHead(nn.Module):
  """Projection of features to the embedding, optionally L2-normalised (float32).

  Attributes:
    dim: the embedding size.
    normalize: divide by the L2 norm (unit embeddings, for cosine-based losses).
    use_bias: a bias in the projection.

  >>> head = EmbeddingHead(4)
  >>> e = head.apply(head.init(jax.random.key(0), jnp.ones((2, 8))), jnp.ones((2, 8)))
  >>> [round(float(v), 5) for v in jnp.linalg.norm(e, axis=1)]
  [1.0, 1.0]
  """

  dim: int
  normalize: bool = True
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = jnp.asarray(x).astype(jnp.float32)
    x = nn.Dense(self.dim, use_bias=self.use_bias, dtype=jnp.float32)(x)
    return distances.l2_normalize(x) if self.normalize else x


class Encoder(nn.Module):
  """A backbone followed by an embedding head: ``x -> head(backbone(x))``.

  Attributes:
    backbone: any module here (or one called as ``backbone(x, train)``).
    head: e.g. ``EmbeddingHead(128)``; None returns the backbone's features.

  >>> enc = Encoder(MLPEncoder(hidden=(8,), batch_norm=True), EmbeddingHead(4))
  >>> x = jnp.arange(6.0).reshape(3, 2)
  >>> variables = enc.init(jax.random.key(0), x)
  >>> sorted(variables)  # parameters and BatchNorm statistics
  ['batch_stats', 'params']
  >>> e, updates = enc.apply(variables, x, train=True, mutable=["batch_stats"])
  >>> e.shape
  (3, 4)
  """

  backbone: nn.Module
  head: nn.Module | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.backbone(x, train=train)
    return x if self.head is None else self.head(x, train=train)


class Siamese(nn.Module):
  """Twin embeddings from one encoder: ``(x1, x2) -> (encoder(x1), encoder(x2))``.

  Both inputs go through the encoder in one batch, so there is one set of weights and,
  in training mode, one BatchNorm update computed on both halves.

  Attributes:
    encoder: the shared encoder.

  >>> net = Siamese(Encoder(MLPEncoder(hidden=(8,)), EmbeddingHead(4)))
  >>> x = jnp.ones((3, 5))
  >>> e1, e2 = net.apply(net.init(jax.random.key(0), x, x), x, x)
  >>> bool(jnp.all(e1 == e2))
  True
  """

  encoder: nn.Module

  @nn.compact
  def __call__(
    self, x1: jax.Array, x2: jax.Array, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
    if x1.shape != x2.shape:
      raise ValueError(
        f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and "
        f"{tuple(x2.shape)}."
      )
    if x1.dtype != x2.dtype:
      x2 = x2.astype(x1.dtype)
    e = self.encoder(jnp.concatenate([x1, x2]), train=train)
    return e[: x1.shape[0]], e[x1.shape[0] :]


class Proxies(nn.Module):
  """Learnable proxies [C, d] (or sub-centres [C, K, d]) as Flax parameters.

  Initialised with ``metriclearn.initializers.init_proxies``; the parameter is named
  ``proxies``. For class-sharded proxies (``proxy_axis_name`` of the proxy losses),
  give each device a module with ``num_classes = C / W``.

  Attributes:
    num_classes: C (this device's share when sharded).
    dim: the embedding size d.
    num_centers: K sub-centres per class (1: [C, d]).

  >>> p = Proxies(10, 4)
  >>> variables = p.init(jax.random.key(0))
  >>> p.apply(variables).shape
  (10, 4)
  """

  num_classes: int
  dim: int
  num_centers: int = 1

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param(
      "proxies",
      lambda key: init_proxies(
        key, self.num_classes, self.dim, num_centers=self.num_centers
      ),
    )


# ----------------------------------------------------------------------------------
# Descriptions: a tree of known modules as JSON, rebuilt from a fixed registry.

#: The classes a description may name: a name is looked up here, never imported.
#: (:class:`NNXEncoder`, defined below, is added after it.)
REGISTRY: dict[str, type] = {
  cls.__name__: cls
  for cls in (MLPEncoder, ConvEncoder, KochTower, ResNet, EmbeddingHead, Encoder)
}
#: The computation dtypes a description may hold (as ``{"dtype": name}``).
FLOAT_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")


class _NotDescribable(Exception):
  pass


def _fields(cls: type) -> list[str]:
  if cls.__name__ == "NNXEncoder":  # an NNX module: the Linen module it wraps
    return ["module"]
  return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def _describe_value(value: Any) -> Any:
  if value is None or isinstance(value, bool | int | str):
    return value
  if isinstance(value, float):
    if not math.isfinite(value):
      raise _NotDescribable
    return value
  if isinstance(value, np.bool_ | np.integer | np.floating):
    return _describe_value(value.item())
  if isinstance(value, nn.Module):
    return _describe_module(value)
  if isinstance(value, list | tuple):
    return [_describe_value(v) for v in value]
  try:
    name = np.dtype(value).name
  except TypeError:
    raise _NotDescribable from None
  if name not in FLOAT_DTYPES:
    raise _NotDescribable
  return {"dtype": name}


def _describe_module(module: Any) -> dict[str, Any]:
  cls = type(module)
  if REGISTRY.get(cls.__name__) is not cls:
    raise _NotDescribable
  if cls.__name__ == "NNXEncoder":
    return {
      "class": cls.__name__,
      "fields": {"module": _describe_module(module.linen_module)},
    }
  fields = {name: _describe_value(getattr(module, name)) for name in _fields(cls)}
  return {"class": cls.__name__, "fields": fields}


def describe(module: Any) -> dict[str, Any] | None:
  """The JSON description of a tree of :data:`REGISTRY` modules, or None for another.

  A description is ``{"class": name, "fields": {field: value}}``, with every dataclass
  field of the module but ``parent`` and ``name``; a value is a JSON scalar, a list
  (rebuilt as a tuple), a nested description or ``{"dtype": "float32"}``. A subclass,
  a known module around an unknown one, or a value of another kind (a non-finite
  float, an integer dtype, a function) gives None. :func:`build` rebuilds it. An
  :class:`NNXEncoder` is ``{"class": "NNXEncoder", "fields": {"module": <its Linen
  module's description>}}`` (its structure, not its variables); any other NNX module
  gives None.

  >>> describe(EmbeddingHead(4))
  {'class': 'EmbeddingHead', 'fields': {'dim': 4, 'normalize': True, 'use_bias': True}}
  >>> model = Encoder(ConvEncoder(filters=8), EmbeddingHead(4))
  >>> build(describe(model)) == model
  True
  """
  try:
    return _describe_module(module)
  except _NotDescribable:
    return None


def _build_value(value: Any) -> Any:
  if value is None or isinstance(value, bool | int | float | str):
    return value
  if isinstance(value, list):
    return tuple(_build_value(v) for v in value)
  if isinstance(value, dict) and set(value) == {"dtype"}:
    if value["dtype"] not in FLOAT_DTYPES:
      raise ValueError(f"dtype {value['dtype']!r} is not one of {FLOAT_DTYPES}.")
    return jnp.dtype(value["dtype"])
  if isinstance(value, dict) and "class" in value:
    return build(value)
  raise ValueError(f"model description holds an unknown value {value!r}.")


def build(description: Any) -> Any:
  """Rebuilds a module from its :func:`describe` description; nothing is imported.

  An ``NNXEncoder`` description gives an :class:`NNXEncoder` without variables
  (:func:`with_variables` gives it some).

  Raises:
    ValueError: the description is malformed, names a class outside
      :data:`REGISTRY`, a field the class does not have, or a value it cannot take.
  """
  if not isinstance(description, dict) or set(description) != {"class", "fields"}:
    raise ValueError(
      f"a model description is {{'class', 'fields'}}, got {description!r}."
    )
  name, fields = description["class"], description["fields"]
  if not isinstance(name, str) or name not in REGISTRY:
    raise ValueError(
      f"unknown model class {name!r}: a description may only name "
      f"{tuple(REGISTRY)} (a name is looked up there, never imported)."
    )
  cls = REGISTRY[name]
  if not isinstance(fields, dict):
    raise ValueError(f"{name}'s fields must be an object: {fields!r}.")
  unknown = sorted(set(fields) - set(_fields(cls)))
  if unknown:
    raise ValueError(f"{name} has no fields {unknown} (its fields: {_fields(cls)}).")
  kwargs = {key: _build_value(value) for key, value in fields.items()}
  try:
    return cls(**kwargs)
  except TypeError as e:
    raise ValueError(f"cannot rebuild {name}: {e}") from e


# ----------------------------------------------------------------------------------
# Flax NNX: the encoders above as NNX modules, and any NNX module seen as Linen.


def as_variables(variables: Any, model: Any = None) -> dict[str, Any]:
  """An encoder's ``{"params": ..., "batch_stats": ...}`` from a mapping of them, a
  ``metriclearn.training.TrainState`` (its encoder part only: never the optimizer),
  or, for None, the NNX ``model``'s own."""
  if variables is None and isinstance(model, nnx.Module):
    view = as_linen(model)
    if isinstance(view, NNXAdapter):
      return view.variables
  if isinstance(variables, Mapping):
    return dict(variables)
  if hasattr(variables, "params"):  # a TrainState: the encoder's part only
    out = {"params": variables.params}
    if getattr(variables, "batch_stats", None):
      out["batch_stats"] = variables.batch_stats
    return out
  raise TypeError(
    "variables must be the model's variables ({'params': ..., 'batch_stats': ...}), "
    f"a TrainState, or None for an NNX module's own, got {type(variables).__name__}."
  )


class NNXEncoder(nnx.bridge.ToNNX):
  """A Linen module of this file as a Flax NNX module (``flax.nnx.bridge.ToNNX``).

  Made by :func:`nnx_encoder`. It holds the Linen module's variables as NNX variables
  at the same paths (``nnx.Param`` for ``params``, ``nnx.BatchStat`` for
  ``batch_stats``) and no random state: the encoders here draw no random numbers when
  applied. ``m(x)`` runs the Linen module in the mode set by ``m.train()`` (batch
  statistics, running averages updated in place, as NNX's ``BatchNorm`` does; the
  default) or ``m.eval()`` (running averages); ``m(x, train=bool)`` overrides it.

  ``NNXEncoder(module)`` alone, without variables, is only a description (what
  :func:`build` returns); :func:`nnx_encoder` or :func:`with_variables` give it
  variables.

  Attributes:
    linen_module: the Linen module it runs.
    use_running_average: evaluation mode (set by ``train()`` / ``eval()``).
  """

  def __init__(self, module: nn.Module):
    if not isinstance(module, nn.Module):
      raise TypeError(
        f"NNXEncoder wraps a Flax Linen module, got {type(module).__name__}."
      )
    super().__init__(module)
    self.to_nnx__use_running_average = False  # ToNNX ignores to_nnx__ attributes

  @property
  def linen_module(self) -> nn.Module:
    return self.to_nnx__module

  @property
  def use_running_average(self) -> bool:
    return self.to_nnx__use_running_average

  @use_running_average.setter
  def use_running_average(self, value: bool) -> None:
    self.to_nnx__use_running_average = bool(value)

  def set_view(self, use_running_average: bool | None = None) -> None:
    """What ``nnx.view(m, use_running_average=...)`` sets."""
    if use_running_average is not None:
      self.use_running_average = use_running_average

  @property
  def initialized(self) -> bool:
    """Whether it holds variables (else it is only a description)."""
    return any(not k.startswith(("to_nnx__", "_pytree__")) for k in vars(self))

  def __call__(  # type: ignore[override]  # (x, train) only, not ToNNX's options
    self, x: jax.Array, train: bool | None = None
  ) -> jax.Array:
    if not self.initialized:
      raise ValueError(
        f"this NNXEncoder of {type(self.linen_module).__name__} holds no variables; "
        "make it with nnx_encoder(module, rngs=..., example=...) or with_variables."
      )
    train = not self.use_running_average if train is None else bool(train)
    mutable = ["batch_stats"] if train else False
    return super().__call__(x, train=train, mutable=mutable)


def _init_key(rngs: Any) -> jax.Array:
  if isinstance(rngs, nnx.Rngs):
    return rngs.params()
  if isinstance(rngs, int) and not isinstance(rngs, bool):
    return jax.random.key(rngs)
  if isinstance(rngs, jax.Array | np.ndarray):
    return jnp.asarray(rngs)
  raise TypeError(f"rngs must be an nnx.Rngs, a PRNG key or an int, got {rngs!r}.")


def nnx_encoder(
  module: nn.Module,
  *,
  rngs: nnx.Rngs | jax.Array | int | None = None,
  example: Any = None,
  variables: Any = None,
) -> NNXEncoder:
  """A Linen encoder (e.g. ``Encoder(ConvEncoder(), EmbeddingHead(64))``) as an NNX
  module, initialised or holding given variables.

  With ``rngs`` and ``example`` its weights are exactly ``module.init(key, example)``'s
  (``key`` is ``rngs.params()`` for an ``nnx.Rngs``, the key itself, or
  ``jax.random.key(rngs)`` for an int). With ``variables`` it holds those, e.g. a
  Linen run's (``{"params": ..., "batch_stats": ...}`` or its ``TrainState``).

  Args:
    module: any Linen module called as ``module.apply(variables, x, train=bool)``
      that draws no random numbers when applied (all of this file's encoders).
    rngs: the initialisation's random numbers.
    example: a batch of inputs of the shape the encoder will see (any batch size).
    variables: the Linen variables to hold instead of initialising.

  Returns:
    An :class:`NNXEncoder` in training mode (NNX's default); ``.eval()`` for
    inference.

  >>> mlp = MLPEncoder((4,), batch_norm=True)
  >>> m = nnx_encoder(mlp, rngs=0, example=jnp.ones((1, 3)))  # = mlp.init(key(0), ..)
  >>> jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(m, nnx.Param)))
  {'BatchNorm_0': {'bias': (4,), 'scale': (4,)}, 'Dense_0': {'kernel': (3, 4)}}
  """
  if not isinstance(module, nn.Module):
    raise TypeError(f"module must be a Flax Linen module, got {type(module).__name__}.")
  if (variables is None) == (example is None or rngs is None):
    raise ValueError("give nnx_encoder either rngs and example, or variables.")
  if variables is None:
    variables = jax.jit(module.init)(_init_key(rngs), example)
  encoder = NNXEncoder(module)
  attrs = bridge_variables.linen_vars_to_nnx_attrs(unfreeze(as_variables(variables)))
  data = getattr(nnx, "data", lambda value: value)  # flax >= 0.12 marks pytree data
  for name, value in attrs.items():
    setattr(encoder, name, data(value))
  return encoder


def _tree(flat: Sequence[tuple[tuple, Any]]) -> dict[str, Any]:
  """``[(path, Variable)]`` -> nested dicts of the values, keyed by ``str(key)``."""
  out: dict[str, Any] = {}
  for path, variable in flat:
    node = out
    for key in path[:-1]:
      node = node.setdefault(str(key), {})
    node[str(path[-1])] = variable.get_value()
  return out


def _state(template: Sequence[tuple[tuple, Any]], tree: Any, name: str) -> nnx.State:
  """The inverse of :func:`_tree`: ``tree``'s values in ``template``'s variables."""
  flat = []
  for path, variable in template:
    value = tree
    try:
      for key in path:
        value = value[str(key)]
    except (KeyError, TypeError, IndexError):
      value = None
    if value is None or isinstance(value, Mapping):
      keys = sorted(map(str, tree)) if isinstance(tree, Mapping) else type(tree)
      raise ValueError(
        f"the NNX module has the {name} {'/'.join(map(str, path))}, which the given "
        f"variables do not hold (their top-level keys: {keys})."
      )
    flat.append((path, variable.replace(value)))
  return nnx.from_flat_state(flat)


def _dropout_key(rngs: Any) -> jax.Array | None:
  """The typed key of Linen-style ``rngs`` (``{"dropout": key}``, or one key)."""
  if isinstance(rngs, Mapping):
    rngs = rngs.get("dropout", next(iter(rngs.values()), None))
  if rngs is None:
    return None
  key = jnp.asarray(rngs)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)  # raw bits, as TrainState.rng holds them


class NNXAdapter:
  """A ``flax.nnx.Module`` with Linen's calling convention, which training calls.

  The module is split once (``nnx.split``) into its graph, its ``nnx.Param`` and
  ``nnx.BatchStat`` variables, and the rest (e.g. RNG streams). Its variables are
  ``{"params": ..., "batch_stats": ...}`` as nested dicts of arrays (keys are the
  attribute names, list indices as strings), which a ``TrainState`` holds and Orbax
  saves as it does a Linen module's. ``apply`` merges given variables into a copy of
  the module (``nnx.merge``), sets the mode (``.train()`` or ``.eval()``: BatchNorm's
  running averages, Dropout) and calls it; the module itself is never changed.

  Dropout: in training, given ``rngs={"dropout": key}`` (the train step's key of the
  step and device), every RNG stream of the module is re-keyed from ``key`` before
  the call (``fold_in`` of the stream's own key), so masks differ from step to step
  and are a function of the run's key and the step (a resumed run draws the same
  ones). Without ``rngs``, or in evaluation, the module's own streams are used as
  they were when adapted. A dropout layer must hold its stream (``nnx.Dropout(rate,
  rngs=rngs)``, as in Flax's NNX examples): ``apply`` passes no ``rngs`` to the
  module's call. Other variables (neither ``Param``, ``BatchStat`` nor RNG
  state) stay as they were when adapted: they are not trained or updated.

  A module whose ``__call__`` has a ``train`` parameter also gets ``train=`` (the mode
  is set either way).

  >>> class Net(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.linear = nnx.Linear(3, 2, rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.linear(x)
  >>> view = as_linen(Net(nnx.Rngs(0)))
  >>> variables = view.init(None, jnp.ones((1, 3)))
  >>> jax.tree.map(jnp.shape, variables)
  {'params': {'linear': {'bias': (2,), 'kernel': (3, 2)}}}
  >>> view.apply(variables, jnp.ones((4, 3)), train=False).shape
  (4, 2)
  """

  def __init__(self, module: nnx.Module):
    if not isinstance(module, nnx.Module):
      raise TypeError(f"expected a flax.nnx.Module, got {type(module).__name__}.")
    self.module = module
    graphdef, params, stats, rest = cast(  # flax types split(*filters) as variadic
      tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State],
      nnx.split(module, nnx.Param, nnx.BatchStat, ...),
    )
    self._graphdef, self._rest = graphdef, list(nnx.to_flat_state(rest))
    self._params = list(nnx.to_flat_state(params))
    self._stats = list(nnx.to_flat_state(stats))
    try:
      self._takes_train = "train" in inspect.signature(module).parameters
    except (TypeError, ValueError):  # not introspectable: the mode alone
      self._takes_train = False

  def __repr__(self) -> str:
    return f"NNXAdapter({type(self.module).__name__})"

  @property
  def variables(self) -> dict[str, Any]:
    """The module's ``{"params": ..., "batch_stats": ...}`` (the latter if any)."""
    out = {"params": _tree(self._params)}
    if self._stats:
      out["batch_stats"] = _tree(self._stats)
    return out

  def init(self, rngs: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A copy of the module's own variables (an NNX module is initialised when it is
    made, so ``rngs`` is unused), once ``args`` are checked to fit (traced, not
    run)."""
    del rngs
    variables = self.variables
    jax.eval_shape(lambda v: self.apply(v, *args, **kwargs), variables)
    return jax.tree.map(lambda a: jnp.array(a, copy=True), variables)

  def _merge(self, variables: Any, key: jax.Array | None) -> nnx.Module:
    variables = as_variables(variables)
    params = _state(self._params, variables.get("params", {}), "parameter")
    stats = _state(self._stats, variables.get("batch_stats", {}), "batch statistic")
    seed = None if key is None else jax.random.bits(key, (), jnp.uint32)
    rest = []  # new variables, made in the caller's trace (so the call may update them)
    for path, variable in self._rest:
      value = variable.get_value()
      if seed is not None and isinstance(variable, nnx.RngKey):
        value = jax.random.fold_in(value, seed)
      rest.append((path, variable.replace(value)))
    return nnx.merge(self._graphdef, params, stats, nnx.from_flat_state(rest))

  def merge(self, variables: Any) -> nnx.Module:
    """A new module of this structure holding ``variables`` (a mapping or a
    ``TrainState``), in the adapted module's mode."""
    return self._merge(variables, None)

  def apply(
    self,
    variables: Any,
    *args: Any,
    train: bool = False,
    rngs: Any = None,
    mutable: Any = False,
    **kwargs: Any,
  ) -> Any:
    """``module(*args, **kwargs)`` with ``variables``, in training or evaluation mode.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}``.
      *args: the module's inputs.
      train: training mode (``module.train()``) or evaluation (``module.eval()``).
      rngs: ``{"dropout": key}``: re-keys the module's RNG streams (training only).
      mutable: ``["batch_stats"]`` (or True) to also return the updated statistics.
      **kwargs: passed to the module.

    Returns:
      The output, or ``(output, {"batch_stats": ...})`` when ``mutable``.
    """
    if mutable is not False and mutable is not True:
      names = [mutable] if isinstance(mutable, str) else list(mutable)
      if set(names) - {"batch_stats"}:
        raise ValueError(
          f"an NNX module's only mutable collection here is 'batch_stats' (its "
          f"nnx.BatchStat variables), got mutable={mutable!r}."
        )
    module = self._merge(variables, _dropout_key(rngs) if train else None)
    module.train() if train else module.eval()
    if self._takes_train:
      kwargs.setdefault("train", train)
    out = module(*args, **kwargs)
    if mutable is False:
      return out
    stats = list(nnx.to_flat_state(nnx.state(module, nnx.BatchStat)))
    return out, ({"batch_stats": _tree(stats)} if stats else {})


def as_linen(model: Any) -> Any:
  """``model`` with Linen's calling convention: ``init(rngs, x)`` and ``apply(variables,
  x, train=, rngs=, mutable=)``.

  A Linen module is returned as it is; an :class:`NNXEncoder` without variables is
  its Linen module (the same variables and computation); any other
  ``flax.nnx.Module`` is wrapped in an :class:`NNXAdapter`.

  Raises:
    TypeError: ``model`` is neither a Linen nor an NNX module.
  """
  if isinstance(model, nn.Module | NNXAdapter):
    return model
  if isinstance(model, NNXEncoder) and not model.initialized:
    return model.linen_module
  if isinstance(model, nnx.Module):
    return NNXAdapter(model)
  raise TypeError(
    "the model must be a Flax Linen module (flax.linen.Module) or a flax.nnx.Module, "
    f"got {type(model).__name__}."
  )


def with_variables(module: nnx.Module, variables: Any) -> nnx.Module:
  """A new NNX module like ``module`` holding ``variables``, e.g. trained ones::

    state = training.fit(step, state, batches, num_steps=1000)
    trained = models.with_variables(model, state)  # model unchanged; trained.eval()

  Args:
    module: a ``flax.nnx.Module`` (an :class:`NNXEncoder` may hold no variables yet).
    variables: ``{"params": ..., "batch_stats": ...}`` or a ``TrainState``.

  Returns:
    A module of the same class and structure, in ``module``'s mode.
  """
  if isinstance(module, NNXEncoder):
    out = nnx_encoder(module.linen_module, variables=variables)
    out.use_running_average = module.use_running_average
    return out
  if not isinstance(module, nnx.Module):
    raise TypeError(
      f"with_variables takes a flax.nnx.Module, got {type(module).__name__} (a Linen "
      "module holds no variables: call module.apply(variables, x))."
    )
  return NNXAdapter(module).merge(variables)


REGISTRY[NNXEncoder.__name__] = NNXEncoder
