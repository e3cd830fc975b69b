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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metriclearn import distances
from metriclearn.initializers import init_proxies

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
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
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
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
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
REGISTRY: dict[str, type[nn.Module]] = {
  cls.__name__: cls
  for cls in (MLPEncoder, ConvEncoder, KochTower, ResNet, EmbeddingHead, Encoder)
}
#: The computation dtypes a description may hold (as ``{"dtype": name}``).
FLOAT_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")


class _NotDescribable(Exception):
  pass


def _fields(cls: type) -> list[str]:
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


def _describe_module(module: nn.Module) -> dict[str, Any]:
  cls = type(module)
  if REGISTRY.get(cls.__name__) is not cls:
    raise _NotDescribable
  fields = {name: _describe_value(getattr(module, name)) for name in _fields(cls)}
  return {"class": cls.__name__, "fields": fields}


def describe(module: nn.Module) -> dict[str, Any] | None:
  """The JSON description of a tree of :data:`REGISTRY` modules, or None for another.

  A description is ``{"class": name, "fields": {field: value}}``, with every dataclass
  field of the module but ``parent`` and ``name``; a value is a JSON scalar, a list
  (rebuilt as a tuple), a nested description or ``{"dtype": "float32"}``. A subclass,
  a known module around an unknown one, or a value of another kind (a non-finite
  float, an integer dtype, a function) gives None. :func:`build` rebuilds it.

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


def build(description: Any) -> nn.Module:
  """Rebuilds a module from its :func:`describe` description; nothing is imported.

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
