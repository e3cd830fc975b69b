"""Flax NNX modules through metriclearn: a user's NNX MLP and the NNX Conv-4 of
``models.nnx_encoder`` train on digits through ``make_train_step`` and ``fit``; the
NNX and Linen Conv-4 with the same weights take the same step; every built-in encoder
computes the same as NNX; dropout keys follow the step; checkpoints resume exactly;
exports round-trip, with and without ``model=``.

The two training runs are module fixtures (each compiles its step once) that the
export tests reuse.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from metriclearn import data, inference, models, training
from metriclearn.losses import softmax

SUPCON = functools.partial(softmax.supcon_loss, temperature=0.1)
STEPS = 40


class MLP(nnx.Module):
  """A user's NNX encoder: Linear, BatchNorm, ReLU, Dropout, Linear."""

  def __init__(self, din: int, hidden: int, dim: int, *, rngs: nnx.Rngs):
    self.linear1 = nnx.Linear(din, hidden, use_bias=False, rngs=rngs)
    self.norm = nnx.BatchNorm(hidden, rngs=rngs)
    self.dropout = nnx.Dropout(0.1, rngs=rngs)
    self.linear2 = nnx.Linear(hidden, dim, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return self.linear2(self.dropout(nnx.relu(self.norm(self.linear1(x)))))


@functools.cache
def digits():
  return data.load("digits")


def upsample(images):
  """8 x 8 digits to 16 x 16 (each pixel repeated), enough for four 2x2 poolings."""
  return np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)


def batches(size=16, seed=0):
  """Float P x K batches of digits (8 classes x 8 images), optionally upsampled."""
  for b in data.balanced_batches(digits(), 8, 8, seed=seed):
    images = b["image"] if size == 8 else upsample(b["image"])
    yield {"image": np.asarray(data.to_float(images)), "label": b["label"]}


def losses_of(log_path):
  return [r["loss"] for r in map(json.loads, open(log_path)) if "loss" in r]


def assert_loss_falls(losses):
  # log_every=5: eight means of five steps each
  assert len(losses) == STEPS // 5
  assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses


def train(model, size, tmp_path_factory):
  example = next(batches(size))["image"][:2]
  state = training.create_train_state(
    jax.random.PRNGKey(0), model, optax.adam(3e-3), example
  )
  log = tmp_path_factory.mktemp("log") / "log.jsonl"
  step = training.make_train_step(model, SUPCON)
  final = training.fit(
    step,
    state,
    batches(size),
    num_steps=STEPS,
    log_path=log,
    log_every=5,
    progress=False,
  )
  return state, final, losses_of(log)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
  model = MLP(64, 32, 16, rngs=nnx.Rngs(0))
  return (model, *train(model, 8, tmp_path_factory))


def conv4():
  return models.Encoder(models.ConvEncoder(filters=16), models.EmbeddingHead(16))


@pytest.fixture(scope="module")
def conv4_run(tmp_path_factory):
  example = upsample(np.zeros((1, 8, 8, 1), np.float32))
  model = models.nnx_encoder(conv4(), rngs=nnx.Rngs(0), example=example)
  return (model, *train(model, 16, tmp_path_factory))


def test_users_nnx_mlp_trains_on_digits(mlp_run):
  model, initial, final, losses = mlp_run
  assert_loss_falls(losses)
  # the state holds the module's variables as nested dicts (what Orbax saves)
  assert jax.tree.map(jnp.shape, final.params) == {
    "linear1": {"kernel": (64, 32)},
    "norm": {"bias": (32,), "scale": (32,)},
    "linear2": {"bias": (16,), "kernel": (32, 16)},
  }
  assert not np.allclose(final.batch_stats["norm"]["mean"], 0)  # running averages
  # the module itself is untouched; with_variables gives the trained one
  np.testing.assert_array_equal(
    model.linear1.kernel[...], initial.params["linear1"]["kernel"]
  )
  trained = models.with_variables(model, final)
  trained.eval()
  x = np.asarray(data.to_float(digits().images[:300]))
  want = training.embed(training.make_eval_step(model), final, x, batch_size=128)
  np.testing.assert_allclose(np.asarray(trained(x)), want, rtol=1e-5, atol=1e-5)


def test_nnx_conv4_trains_on_digits(conv4_run):
  model, _, final, losses = conv4_run
  assert isinstance(model, models.NNXEncoder) and isinstance(model, nnx.Module)
  assert_loss_falls(losses)
  assert set(final.params["backbone"]) == {
    f"{layer}_{i}" for layer in ("Conv", "BatchNorm") for i in range(4)
  }


def test_nnx_and_linen_conv4_take_the_same_step():
  """The same weights give the same loss, gradients and batch statistics.

  The optimizer records the gradients in its state (its updates are zero), so they
  are compared exactly as the step computed them.
  """

  def keep_gradients(grads, state, params=None):
    return jax.tree.map(jnp.zeros_like, grads), grads

  record = optax.GradientTransformation(lambda params: params, keep_gradients)
  linen = models.Encoder(models.ConvEncoder(filters=8), models.EmbeddingHead(8))
  batch = next(batches(16, seed=3))
  x = batch["image"][:2]
  nnx_model = models.nnx_encoder(linen, rngs=jax.random.key(7), example=x)
  # nnx_encoder's weights are exactly Linen's init with the same key
  want = jax.jit(linen.init)(jax.random.key(7), x)
  got = models.as_linen(nnx_model).variables
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)

  results = []
  for model in (nnx_model, linen):
    state = training.create_train_state(jax.random.PRNGKey(0), model, record, x)
    state = state.replace(params=got["params"], batch_stats=got["batch_stats"])
    state = state.replace(opt_state=record.init(state.trainable))
    step = jax.jit(training.make_train_step(model, SUPCON))
    results.append(step(state, batch))
  (nnx_state, nnx_metrics), (linen_state, linen_metrics) = results
  np.testing.assert_allclose(nnx_metrics["loss"], linen_metrics["loss"], rtol=1e-5)
  assert float(linen_metrics["grad_norm"]) > 0
  for name in ("opt_state", "batch_stats"):  # the gradients; the new statistics
    a, b = getattr(nnx_state, name), getattr(linen_state, name)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)


def test_dropout_keys_follow_the_step_key():
  model = MLP(64, 32, 16, rngs=nnx.Rngs(1))
  view = models.as_linen(model)
  x = np.asarray(data.to_float(digits().images[:32]))

  @functools.partial(jax.jit, static_argnums=1)
  def apply(key, train):
    return view.apply(view.variables, x, train=train, rngs={"dropout": key})

  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  np.testing.assert_array_equal(apply(k1, True), apply(k1, True))  # reproducible
  assert not np.allclose(apply(k1, True), apply(k2, True))  # a new mask per key
  np.testing.assert_array_equal(apply(k1, False), apply(k2, False))  # eval: none
  with pytest.raises(ValueError, match="batch_stats"):
    view.apply(view.variables, x, train=True, mutable=["intermediates"])


class Flagged(nnx.Module):
  """A module written Linen-style, with a ``train`` argument."""

  def __init__(self, rngs: nnx.Rngs):
    self.linear = nnx.Linear(3, 2, rngs=rngs)

  def __call__(self, x, train: bool = False):
    return 2.0 * self.linear(x) if train else self.linear(x)


def test_a_train_argument_gets_the_mode():
  view = models.as_linen(Flagged(nnx.Rngs(0)))
  x = np.ones((2, 3), np.float32)
  evaluation = view.apply(view.variables, x)
  np.testing.assert_allclose(view.apply(view.variables, x, train=True), 2 * evaluation)


def test_checkpointed_nnx_run_resumes_exactly(tmp_path):
  """4 steps, a checkpoint, 2 more steps in a new fit == 6 steps straight (the
  dropout masks come from the run's key and the step, not from the module)."""
  model = MLP(64, 8, 4, rngs=nnx.Rngs(2))
  source = lambda s: next(batches(8, seed=s))
  state = training.create_train_state(
    jax.random.PRNGKey(1), model, optax.adam(1e-2), source(0)["image"][:2]
  )
  step = training.make_train_step(model, SUPCON)
  run = functools.partial(training.fit, step, state, source, progress=False)
  straight = run(num_steps=6)
  run(num_steps=4, checkpoint_dir=tmp_path, save_every=4)
  resumed = run(num_steps=6, checkpoint_dir=tmp_path, save_every=4)
  assert int(resumed.step) == 6
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(a, b)


def test_nnx_conv4_export_loads_without_model(conv4_run, tmp_path):
  model, _, final, _ = conv4_run
  trained = models.with_variables(model, final)
  folder = inference.export_encoder(
    tmp_path / "conv4", trained, input_shape=(16, 16, 1)
  )  # its own variables; uint8 input, to_float preprocessing (the defaults)
  manifest = json.loads((folder / "manifest.json").read_text())
  assert manifest["model"]["class"] == "NNXEncoder"
  assert manifest["model_class"] == "metriclearn.models.NNXEncoder"
  images = upsample(digits().images[:50])
  encoder = inference.load_encoder(folder)  # rebuilt from the manifest alone
  assert isinstance(encoder.model, models.NNXEncoder)
  trained.eval()
  want = np.asarray(trained(data.to_float(images)))
  np.testing.assert_allclose(encoder.embed(images), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(  # the loaded module is usable as NNX directly
    np.asarray(encoder.model(data.to_float(images))), want, rtol=1e-5, atol=1e-6
  )
  # the arrays are the Linen module's, so the Linen Conv-4 loads them too
  as_linen = inference.load_encoder(folder, model=conv4())
  np.testing.assert_allclose(as_linen.embed(images), want, rtol=1e-5, atol=1e-6)


def test_users_nnx_export_needs_an_instance_of_the_same_structure(mlp_run, tmp_path):
  model, _, final, _ = mlp_run
  folder = inference.export_encoder(
    tmp_path / "mlp", model, final, input_shape=(8, 8, 1)
  )
  manifest = json.loads((folder / "manifest.json").read_text())
  assert manifest["model"] is None and manifest["model_class"].endswith(".MLP")
  with pytest.raises(ValueError, match="model="):
    inference.load_encoder(folder)
  with pytest.raises(inference.InvalidExportError, match="but the model expects"):
    inference.load_encoder(folder, model=MLP(64, 24, 16, rngs=nnx.Rngs(5)))
  fresh = MLP(64, 32, 16, rngs=nnx.Rngs(5))  # other weights, same structure
  before = fresh.linear1.kernel[...]
  encoder = inference.load_encoder(folder, model=fresh)
  images = digits().images[:40]
  want = training.embed(
    training.make_eval_step(model), final, np.asarray(data.to_float(images))
  )
  np.testing.assert_allclose(encoder.embed(images), want, rtol=1e-5, atol=1e-6)
  assert isinstance(encoder.model, MLP) and encoder.model is not fresh
  np.testing.assert_array_equal(fresh.linear1.kernel[...], before)  # unchanged
  np.testing.assert_allclose(
    np.asarray(encoder.model(data.to_float(images))), want, rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize(
  "module, shape",
  [
    (models.MLPEncoder((8,), batch_norm=True), (3, 5)),
    (models.ConvEncoder(filters=4), (3, 16, 16, 1)),
    (
      models.KochTower((4, 4, 4, 4), (3, 3, 3, 3), hidden=8, padding="SAME"),
      (3, 16, 16),
    ),
    (models.ResNet(stage_sizes=(1, 1), width=4), (3, 8, 8, 2)),
  ],
  ids=["mlp", "conv4", "koch", "resnet"],
)
def test_every_builtin_encoder_is_an_nnx_module_computing_the_same(module, shape):
  """In evaluation and in training mode (with the running averages' update), one
  compiled call for both APIs."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)  # no init to compile

  def value(path, leaf):  # random weights; variances in [0.5, 1.5]
    if path[-1].key == "var":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.5, leaf.shape).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(value, shapes)
  view = models.as_linen(models.nnx_encoder(module, variables=variables))

  @jax.jit
  def outputs(variables):
    train = dict(train=True, mutable=["batch_stats"])
    linen = module.apply(variables, x), module.apply(variables, x, **train)
    nnx_ = view.apply(view.variables, x), view.apply(view.variables, x, **train)
    return linen, nnx_

  want, got = outputs(variables)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_nnx_encoder_description_and_errors():
  linen = conv4()
  description = models.describe(models.NNXEncoder(linen))
  assert description == {
    "class": "NNXEncoder",
    "fields": {"module": models.describe(linen)},  # the structure, no variables
  }
  rebuilt = models.build(json.loads(json.dumps(description)))
  assert isinstance(rebuilt, models.NNXEncoder) and not rebuilt.initialized
  assert models.as_linen(rebuilt) == linen  # without variables: its Linen module
  assert "NNXEncoder" in inference.MODULES
  assert models.describe(MLP(4, 4, 2, rngs=nnx.Rngs(0))) is None
  with pytest.raises(ValueError, match="holds no variables"):
    rebuilt(jnp.zeros((1, 16, 16, 1)))
  with pytest.raises(ValueError, match="rngs and example, or variables"):
    models.nnx_encoder(linen, rngs=0)
  with pytest.raises(TypeError, match="Linen module .* or a flax.nnx.Module"):
    training.make_train_step(lambda x: x, SUPCON)
  with pytest.raises(TypeError, match="Linen module"):
    models.nnx_encoder(MLP(4, 4, 2, rngs=nnx.Rngs(0)), rngs=0, example=np.ones((1, 4)))
