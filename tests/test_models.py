"""Encoders, heads, the siamese twin and the proxies module: shapes, parameter counts
from the papers' architectures, BatchNorm behaviour, shared weights, jit, devices, and
independent NumPy forward passes of a Conv-4 block and a ResNet basic block."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from metriclearn import models
from metriclearn.losses import proxy

# An "rbg" key: with the default threefry keys (jax_threefry_partitionable=True) every
# new random shape under jit costs ~3 s of XLA compilation on CPU; rbg costs ~0.3 s.
KEY = jax.random.key(0, impl="rbg")


def _num_params(module, x):
  """Parameter count from shapes only (nothing is allocated or computed)."""
  variables = jax.eval_shape(module.init, KEY, x)
  return sum(math.prod(a.shape) for a in jax.tree.leaves(variables["params"]))


def _init_apply(module, x, **kw):
  """Initialises and applies, both compiled (eager Flax runs op by op: slow)."""
  variables = jax.jit(module.init)(KEY, x)
  return variables, jax.jit(functools.partial(module.apply, **kw))(variables, x)


@pytest.mark.parametrize(
  "module, shape, out",
  [
    (models.MLPEncoder(hidden=(16, 8)), (3, 20), (3, 8)),
    (models.MLPEncoder(hidden=(16,), batch_norm=True), (3, 6, 6), (3, 16)),
    (models.ConvEncoder(filters=8), (3, 28, 28), (3, 8)),  # [N, H, W] grayscale
    (models.ConvEncoder(filters=8), (2, 32, 32, 3), (2, 8 * 2 * 2)),
    (models.KochTower((4, 8, 8, 8), hidden=16, padding="SAME"), (2, 28, 28), (2, 16)),
    (models.ResNet(stage_sizes=(1, 1, 1, 1), width=4), (2, 32, 32, 3), (2, 32)),
    (models.ResNet(stage_sizes=(1, 1, 1, 1), width=4), (2, 64, 64, 1), (2, 32)),
  ],
)
def test_output_shapes(module, shape, out):
  # shapes by tracing only (the compiled runs are below and in the other tests)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(module.init, KEY, x)
  y = jax.eval_shape(module.apply, variables, x)
  assert y.shape == out and y.dtype == jnp.float32


def test_koch_tower_small_runs():
  tower = models.KochTower((4, 8, 8, 8), hidden=16, padding="SAME")
  x = jax.random.normal(KEY, (2, 28, 28))
  _, y = _init_apply(tower, x)
  assert y.shape == (2, 16)
  assert jnp.all((y > 0) & (y < 1))  # sigmoid features


def test_jit_equals_eager():
  enc = models.Encoder(
    models.ConvEncoder(filters=4, num_blocks=2), models.EmbeddingHead(4)
  )
  x = jax.random.normal(KEY, (3, 8, 8, 2))
  variables = enc.init(KEY, x)
  for train in (False, True):
    kw = dict(train=train, mutable=["batch_stats"] if train else False)
    eager = enc.apply(variables, x, **kw)
    jitted = jax.jit(functools.partial(enc.apply, **kw))(variables, x)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_koch_tower_parameter_count_on_105x105():
  # 105 -conv10-> 96 -pool-> 48 -conv7-> 42 -pool-> 21 -conv4-> 18 -pool-> 9 -conv4-> 6
  # conv1 10*10*1*64 + 64      =      6,464
  # conv2  7*7*64*128 + 128    =    401,536
  # conv3  4*4*128*128 + 128   =    262,272
  # conv4  4*4*128*256 + 256   =    524,544
  # dense (6*6*256)*4096 + 4096 = 37,752,832
  # total                       = 38,947,648 (with the weighted-L1 output unit's
  # 4096 + 1 parameters, 38,951,745 for the whole siamese network)
  x = jnp.zeros((1, 105, 105, 1))
  tower = models.KochTower()
  assert _num_params(tower, x) == 38_947_648
  shapes = jax.eval_shape(tower.init, KEY, x)["params"]
  assert shapes["Dense_0"]["kernel"].shape == (6 * 6 * 256, 4096)
  assert jax.eval_shape(tower.apply, jax.eval_shape(tower.init, KEY, x), x).shape == (
    1,
    4096,
  )
  with pytest.raises(ValueError, match="too small for the VALID tower"):
    jax.eval_shape(tower.init, KEY, jnp.zeros((1, 28, 28)))


def test_conv4_and_resnet18_parameter_counts():
  # Conv-4 on RGB: block 1: 3*3*3*64 + 64 + BN 2*64 = 1,920;
  # blocks 2-4: 3*3*64*64 + 64 + 128 = 37,056 each -> 1,920 + 3 * 37,056 = 113,088
  assert _num_params(models.ConvEncoder(), jnp.zeros((1, 84, 84, 3))) == 113_088

  # ResNet-18 (CIFAR stem): stem 3*3*3*64 + BN 2*64 = 1,856; each stage has two basic
  # blocks of two 3x3 convs (no bias) with BN (2 parameters per channel), the first
  # with a 1x1 conv + BN projection where the width changes.
  def stage(c_in, c):
    first = 9 * c_in * c + 2 * c + 9 * c * c + 2 * c
    proj = (c_in * c + 2 * c) if c_in != c else 0
    second = 2 * (9 * c * c + 2 * c)
    return first + proj + second

  want = 1_856 + stage(64, 64) + stage(64, 128) + stage(128, 256) + stage(256, 512)
  assert want == 11_168_832  # the usual ResNet-18 count without its classifier
  assert _num_params(models.ResNet(), jnp.zeros((1, 32, 32, 3))) == want


def test_embedding_head_normalises():
  enc = models.Encoder(models.MLPEncoder(hidden=(16,)), models.EmbeddingHead(5))
  x = 3.0 * jax.random.normal(KEY, (4, 7))
  _, e = _init_apply(enc, x)
  np.testing.assert_allclose(jnp.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
  raw = models.Encoder(
    models.MLPEncoder(hidden=(16,)), models.EmbeddingHead(5, normalize=False)
  )
  _, e = _init_apply(raw, x)
  assert e.shape == (4, 5)
  assert not np.allclose(jnp.linalg.norm(e, axis=1), 1.0)
  _, f = _init_apply(models.Encoder(models.MLPEncoder(hidden=(16,))), x)
  assert f.shape == (4, 16)  # no head: the backbone's features


@pytest.mark.parametrize(
  "backbone",
  [
    models.ConvEncoder(filters=4, num_blocks=2),
    models.ResNet(stage_sizes=(1, 1), width=4),
    models.MLPEncoder(hidden=(8,), batch_norm=True),
  ],
)
def test_batchnorm_statistics_present_and_updated_in_train_mode(backbone):
  enc = models.Encoder(backbone, models.EmbeddingHead(4))
  x = 2.0 + jax.random.normal(KEY, (6, 16, 16, 1))
  variables = jax.jit(enc.init)(KEY, x)
  assert "batch_stats" in variables
  train = jax.jit(functools.partial(enc.apply, train=True, mutable=["batch_stats"]))
  e_train, updates = train(variables, x)
  changed = jax.tree.map(
    lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"]
  )
  assert all(jax.tree.leaves(changed))  # every mean and variance moved
  # eval mode: running averages, no mutation needed, and not the batch statistics
  e_eval = jax.jit(enc.apply)(variables, x)
  assert not np.allclose(e_eval, e_train)


def test_siamese_shares_weights():
  encoder = models.Encoder(
    models.ConvEncoder(filters=4, num_blocks=2), models.EmbeddingHead(8)
  )
  net = models.Siamese(encoder)
  x1 = jax.random.normal(KEY, (3, 12, 12))
  x2 = jax.random.normal(jax.random.key(1, impl="rbg"), (3, 12, 12))
  variables = jax.jit(net.init)(KEY, x1, x2)
  assert list(variables["params"]) == ["encoder"]  # one tower, not two
  apply = jax.jit(net.apply)
  e1, e2 = apply(variables, x1, x1)
  np.testing.assert_array_equal(e1, e2)  # identical inputs, identical embeddings
  # the twin is the encoder applied twice with the same variables
  inner = {k: v["encoder"] for k, v in variables.items()}
  e1, e2 = apply(variables, x1, x2)
  enc = jax.jit(encoder.apply)
  np.testing.assert_allclose(e1, enc(inner, x1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(e2, enc(inner, x2), rtol=1e-5, atol=1e-6)

  # a pair loss trains the one set of weights (BatchNorm sees both halves at once)
  def pair_loss(params):
    (e1, e2), _ = net.apply(
      {**variables, "params": params}, x1, x2, train=True, mutable=["batch_stats"]
    )
    return jnp.sum((e1 - e2) ** 2)

  grads = jax.jit(jax.grad(pair_loss))(variables["params"])
  assert list(grads) == ["encoder"]
  assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads))) > 0


def test_bfloat16_compute_gives_float32_embeddings():
  enc = models.Encoder(
    models.ResNet(stage_sizes=(1, 1), width=4, dtype=jnp.bfloat16),
    models.EmbeddingHead(4),
  )
  x = jax.random.normal(KEY, (2, 12, 12))
  variables, e = _init_apply(enc, x)
  assert e.dtype == jnp.float32 and jnp.all(jnp.isfinite(e))
  _, (e, _) = _init_apply(enc, x, train=True, mutable=["batch_stats"])
  assert e.dtype == jnp.float32 and jnp.all(jnp.isfinite(e))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables["params"]))


def test_integer_images_and_bad_shapes():
  enc = models.ConvEncoder(filters=4, num_blocks=2)
  x = jnp.arange(2 * 8 * 8, dtype=jnp.uint8).reshape(2, 8, 8)
  _, e = _init_apply(enc, x)
  assert e.dtype == jnp.float32
  with pytest.raises(ValueError, match=r"x must be \[N, H, W, C\]"):
    enc.init(KEY, jnp.zeros((8, 8)))
  with pytest.raises(ValueError, match="same shape"):
    net = models.Siamese(models.MLPEncoder(hidden=(4,)))
    net.init(KEY, jnp.zeros((2, 3)), jnp.zeros((3, 3)))


def test_batchnorm_axis_name_synchronises_statistics_over_devices():
  # 8 devices with 2 rows each give the global batch's statistics and embeddings.
  enc = models.MLPEncoder(hidden=(4,), batch_norm=True, axis_name="i")
  single = models.MLPEncoder(hidden=(4,), batch_norm=True)
  x = jax.random.normal(KEY, (16, 3)) * jnp.arange(1.0, 4.0)
  variables = single.init(KEY, x)
  want, want_upd = single.apply(variables, x, train=True, mutable=["batch_stats"])
  w = jax.device_count()
  replicated = jax.tree.map(lambda a: jnp.stack([a] * w), variables)
  got, upd = jax.pmap(
    lambda v, x: enc.apply(v, x, train=True, mutable=["batch_stats"]), "i"
  )(replicated, x.reshape(w, -1, 3))
  np.testing.assert_allclose(got.reshape(16, -1), want, rtol=1e-5, atol=1e-5)
  got_stats = jax.tree.leaves(upd["batch_stats"])
  for a, b in zip(got_stats, jax.tree.leaves(want_upd["batch_stats"]), strict=True):
    np.testing.assert_allclose(a[3], b, rtol=1e-5, atol=1e-6)


def test_proxies_module_is_learned_with_the_encoder():
  p = models.Proxies(num_classes=5, dim=4)
  proxies = p.apply(p.init(KEY))
  assert proxies.shape == (5, 4) and proxies.dtype == jnp.float32
  sub = models.Proxies(5, 4, num_centers=3)
  assert sub.apply(sub.init(KEY)).shape == (5, 3, 4)

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x, labels):
      e = models.Encoder(models.MLPEncoder(hidden=(8,)), models.EmbeddingHead(4))(x)
      return proxy.normalized_softmax_loss(e, labels, models.Proxies(5, 4)()).mean()

  x, y = jax.random.normal(KEY, (6, 3)), jnp.array([0, 1, 2, 3, 4, 0])
  model = Model()
  params = jax.jit(model.init)(KEY, x, y)["params"]
  grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, x, y)))(params)
  assert float(jnp.abs(grads.pop("Proxies_0")["proxies"]).sum()) > 0
  assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads))) > 0  # encoder


# ----------------------------------------------------------------------------------
# Independent NumPy forward passes (float64 loops and einsum) of a Conv-4 block and a
# ResNet basic block, with set weights: a missing or misplaced nonlinearity, norm,
# pooling or skip connection changes the output.


def np_conv(x, kernel, bias=None, *, stride=1, padding="SAME"):
  """Cross-correlation of [N, H, W, C] with [kh, kw, C, F], as ``lax.conv``:
  ``padding`` 'SAME' (output ceil(H / stride), the odd pixel of padding after) or an
  int on every side."""

  def pads(size, k):
    if padding == "SAME":
      total = max((-(-size // stride) - 1) * stride + k - size, 0)
      return total // 2, total - total // 2
    return padding, padding

  kh, kw, _, f = kernel.shape
  xp = np.pad(x, ((0, 0), pads(x.shape[1], kh), pads(x.shape[2], kw), (0, 0)))
  ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, f))
  for i in range(kh):
    for j in range(kw):
      window = xp[:, i : i + stride * (ho - 1) + 1 : stride]
      window = window[:, :, j : j + stride * (wo - 1) + 1 : stride]
      out += np.einsum("nhwc,cf->nhwf", window, kernel[i, j])
  return out if bias is None else out + bias


def np_batch_norm(x, params, stats, *, train=False, eps=1e-5, momentum=0.9):
  """BatchNorm over N, H, W: the given statistics, or (train) the batch's biased
  ones, which also update the running averages (returned as the second value)."""
  if train:
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    new = {
      "mean": momentum * stats["mean"] + (1 - momentum) * mean,
      "var": momentum * stats["var"] + (1 - momentum) * var,
    }
  else:
    mean, var, new = stats["mean"], stats["var"], stats
  return (x - mean) / np.sqrt(var + eps) * params["scale"] + params["bias"], new


def np_relu(x):
  return np.maximum(x, 0.0)


def np_max_pool(x):
  """2 x 2 windows, stride 2, no padding (an odd last row or column is dropped)."""
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def set_weights(module, x, seed):
  """Random values for every variable (variances in [0.5, 2]), as float64 NumPy."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, KEY, x)

  def value(path, leaf):
    if path[-1].key == "var":
      return rng.uniform(0.5, 2.0, leaf.shape)
    return rng.normal(0.0, 0.5 if path[-1].key == "kernel" else 1.0, leaf.shape)

  return jax.tree_util.tree_map_with_path(value, shapes)


def f32(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float32), tree)


@pytest.mark.parametrize("train", [False, True])
def test_conv4_blocks_equal_a_numpy_forward_pass(train):
  """Two blocks of [Conv 3x3 SAME with bias, BatchNorm, ReLU, MaxPool 2x2] on 7x7
  images: 7 -> 7 -> 3 (the pool drops the last row and column) -> 3 -> 1."""
  module = models.ConvEncoder(filters=3, num_blocks=2)
  x = np.random.default_rng(0).normal(size=(4, 7, 7, 2))
  variables = set_weights(module, x, seed=1)
  p, s = variables["params"], variables["batch_stats"]

  def reference(relu=True):
    h, stats = x, {}
    for i in range(2):
      h = np_conv(h, p[f"Conv_{i}"]["kernel"], p[f"Conv_{i}"]["bias"])
      name = f"BatchNorm_{i}"
      h, stats[name] = np_batch_norm(h, p[name], s[name], train=train)
      h = np_max_pool(np_relu(h) if relu else h)
    return h.reshape(len(h), -1), stats

  kw = dict(train=True, mutable=["batch_stats"]) if train else {}
  out = jax.jit(functools.partial(module.apply, **kw))(f32(variables), f32(x))
  got, updates = out if train else (out, None)
  want, want_stats = reference()
  assert got.shape == (4, 3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if train:
    for name, stats in want_stats.items():
      for key in ("mean", "var"):
        np.testing.assert_allclose(
          updates["batch_stats"][name][key], stats[key], rtol=1e-5, atol=1e-6
        )
  assert not np.allclose(reference(relu=False)[0], want, atol=1e-2)  # ReLU matters


@pytest.mark.parametrize("shape", [(2, 6, 6, 3), (2, 7, 5, 1)], ids=["even", "odd"])
def test_max_pool_2x2_equals_flax_reduce_window(shape):
  """The reshape-and-max pool against Flax's nn.max_pool (XLA reduce_window, an
  independent implementation): values and, with no tied maxima (normal draws),
  gradients; an odd last row or column is dropped by both."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  out = (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  cot = jnp.asarray(np.random.default_rng(1).normal(size=out), jnp.float32)

  def flax_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))

  np.testing.assert_array_equal(models.max_pool_2x2(x), flax_pool(x))
  grads = [
    jax.grad(lambda x, f=f: jnp.sum(f(x) * cot))(x)
    for f in (models.max_pool_2x2, flax_pool)
  ]
  np.testing.assert_array_equal(grads[0], grads[1])
  assert np.count_nonzero(grads[1]) == cot.size  # one winner per window


@pytest.mark.parametrize(
  "c_in, strides", [(4, 1), (2, 2)], ids=["identity", "projection"]
)
def test_resnet_basic_block_equals_a_numpy_forward_pass(c_in, strides):
  """ResidualBlock(4): relu(BN(conv3x3(relu(BN(conv3x3/s(x))))) + shortcut(x)), the
  shortcut x itself, or BN(conv1x1/s(x)) when the shape changes (convs without bias,
  padding 1; on 6x6 with stride 2 both branches give 3x3)."""
  block = models.ResidualBlock(4, strides=strides)
  x = np.random.default_rng(2).normal(size=(2, 6, 6, c_in))
  variables = set_weights(block, x, seed=3)
  p, s = variables["params"], variables["batch_stats"]
  projected = c_in != 4 or strides != 1
  assert ("Conv_2" in p) == projected
  assert all("bias" not in p[f"Conv_{i}"] for i in range(2 + projected))

  def norm(h, i):
    return np_batch_norm(h, p[f"BatchNorm_{i}"], s[f"BatchNorm_{i}"])[0]

  def reference(skip=True):
    y = norm(np_conv(x, p["Conv_0"]["kernel"], stride=strides, padding=1), 0)
    y = norm(np_conv(np_relu(y), p["Conv_1"]["kernel"], padding=1), 1)
    shortcut = x
    if projected:
      shortcut = norm(np_conv(x, p["Conv_2"]["kernel"], stride=strides), 2)
    return np_relu(shortcut + y) if skip else np_relu(y)

  got = jax.jit(block.apply)(f32(variables), f32(x))
  assert got.shape == (2, 6 // strides, 6 // strides, 4)
  np.testing.assert_allclose(got, reference(), rtol=1e-5, atol=1e-5)
  assert not np.allclose(reference(skip=False), reference(), atol=1e-2)  # skip matters
