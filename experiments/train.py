"""metriclearn experiments: one command-line entry.

  python experiments/train.py            # the main job: Omniglot (the bundled pack),
                                         # scored on Lake's official one-shot runs
  python experiments/train.py --smoke    # any configuration in seconds (tests)
  python experiments/train.py --config experiments/configs/digits.py
  python experiments/train.py --config experiments/configs/omniglot_oneshot.py --seed 1
  python experiments/train.py --config experiments/configs/compare.py \
      --set loss=supcon --set dataset=mnist

A configuration is a Python file with ``get_config() -> dict`` (its docstring states the
command and the result it should reach); ``--set key=value`` overrides a key (values
are Python literals). ``--set holdout=validation`` holds out alphabets of the training
split instead of testing (choose a configuration there, never on the test set). Every
run writes into ``--workdir``: ``metrics.json`` (the final held-out metrics, the
configuration, the machine, the wall time), ``log.jsonl`` (the training curve; the
same as TensorBoard scalars in ``tensorboard/`` when TensorBoard is installed, or with
``--set tensorboard=True``), Orbax
``checkpoints/`` (a rerun resumes from them), ``config.json`` (the configuration the
checkpoints belong to), ``encoder/`` (the trained encoder, for
``metriclearn.inference.load_encoder``) and ``figures/`` (training curves, a 2-D map
of held-out embeddings, pair-distance histograms, ROC, a retrieval grid).

A rerun in a workdir resumes from its latest verified checkpoint (a damaged one is
named in a warning and the previous one used) and cuts ``log.jsonl`` back to it. It
is refused, naming the keys, if the configuration differs from ``config.json`` in any
key but those of ``SAFE_ON_RESUME`` (``steps``, the intervals, ``data_path`` and the
evaluation-only keys); ``--allow-change KEY`` accepts a difference on purpose (e.g. a
smaller learning rate after a NaN), ``--resume-from STEP`` an earlier checkpoint. A
SIGTERM saves a checkpoint and exits (status 143); the rerun resumes from it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib.util
import inspect
import json
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import figures  # noqa: E402
import registry  # noqa: E402

from metriclearn import (  # noqa: E402
  data,
  evaluation,
  inference,
  miners,
  models,
  training,
)
from metriclearn import distances as dist  # noqa: E402

DEFAULT_CONFIG = HERE / "configs" / "omniglot.py"
# Lake, Salakhutdinov & Tenenbaum 2015 (Science), 20-way one-shot accuracy on the same
# 20 runs (100 - their error rates), printed beside the main job's result.
LAKE_TABLE = {
  "deep convnet": 0.865,
  "siamese convnet (Koch et al.)": 0.920,
  "people": 0.955,
  "BPL": 0.967,
}
# --smoke: any configuration in seconds (a few steps, a trimmed evaluation).
SMOKE = dict(
  steps=6, eval_every=3, save_every=3, episodes=20, test_classes=20, smoke=True
)


# ------------------------------------------------------------------ configuration


# Keys every configuration has (a configuration file may set them): what --set can
# change without the file naming it.
DEFAULTS = dict(
  loss_kwargs={},  # keyword options of the loss: --set loss_kwargs.temperature=0.05
  loss_init={},  # options of its learnable arrays' initial values: loss_init.scale=10
  miner=None,  # a metriclearn.miners function name (its mask goes to the loss)
  miner_kwargs={},
  optimizer="adamw",  # 'adamw', 'adam', 'sgd' (momentum 0.9), 'lamb'
  schedule="warmup_cosine",  # or 'constant'
  warmup_steps=None,  # default: min(100, steps / 10)
  clip_norm=10.0,
  weight_decay=0.0,
  augment=None,  # 'koch': Koch et al.'s affine augmentation
  tta=False,
  holdout="test",
  data_path=None,  # Lake's / LeCun's archives (default: $METRICLEARN_DATA, ../shared)
  save_every=500,  # checkpoint interval (steps)
  eval_every=250,  # held-out evaluation interval (steps)
  log_every=10,  # log.jsonl interval (steps)
  tensorboard=None,  # also TensorBoard scalars in tensorboard/ (None: if installed)
  normalize=True,  # L2-normalised embeddings
  filters=64,  # conv4's width
  image_size=None,  # Omniglot's size (None: 28, the bundled pack)
  train_split="background",
  validation_groups=5,  # holdout=validation: groups (alphabets) held out
  validation_classes=None,  # ... or classes, without groups (None: max(2, a fifth))
  same_alphabet=False,  # pair sampler: negatives from the same group
  batch_by_group=False,  # balanced sampler: a batch's classes from one group
  ways=20,  # one-shot episodes: classes per episode
  episodes=200,
  test_classes=None,  # evaluate on the first classes only
  max_test=None,  # evaluate on at most this many images
  smoke=False,
)
# Keys a resumed run may change (the checkpoint and the training before it stay
# valid): the step target (a longer cosine schedule from the restored step on), the
# intervals, where the same data lie, and what only the evaluation reads. Any other
# difference from the workdir's config.json is refused.
SAFE_ON_RESUME = (
  "steps",
  "save_every",
  "eval_every",
  "log_every",
  "tensorboard",
  "data_path",
  "ways",
  "episodes",
  "test_classes",
  "max_test",
  "smoke",
)


def _set(config: dict, item: str) -> None:
  key, sep, value = item.partition("=")
  head, dot, option = key.partition(".")
  known = head in config and (not dot or isinstance(config[head], dict))
  if not sep or not known:
    raise ValueError(
      f"--set {item!r}: expected key=value with a key of the configuration "
      f"({', '.join(sorted(config))}), or <dict key>.<option>=value for "
      f"{', '.join(k for k, v in sorted(config.items()) if isinstance(v, dict))}."
    )
  try:
    value = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    pass  # a bare string
  if dot:
    config[head] = {**config[head], option: value}
  else:
    config[head] = value


def load_config(path: str | os.PathLike, overrides=()) -> dict:
  spec = importlib.util.spec_from_file_location("config", path)
  if spec is None or not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"--config: no configuration file at {path}.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = {**DEFAULTS, **module.get_config()}
  for item in overrides:
    _set(config, item)
  return config


def _json(config: dict) -> dict:
  """The configuration as config.json holds it (tuples become lists)."""
  return json.loads(json.dumps(config, default=str))


def check_resume(config: dict, workdir: pathlib.Path, allow=()) -> None:
  """Refuses to resume the run in ``workdir`` with another configuration (keys of
  ``SAFE_ON_RESUME`` and ``allow`` excepted), then writes ``config.json``."""
  path = workdir / "config.json"
  now = _json(config)
  if path.exists() and (workdir / "checkpoints").is_dir():
    saved = json.loads(path.read_text())
    differ = [
      k
      for k in sorted(set(saved) | set(now))
      if saved.get(k) != now.get(k) and k not in SAFE_ON_RESUME and k not in allow
    ]
    if differ:
      detail = "; ".join(
        f"{k}: {saved.get(k, '(unset)')!r} there, {now.get(k, '(unset)')!r} now"
        for k in differ
      )
      raise ValueError(
        f"{workdir} holds a run with another configuration ({detail}); its "
        f"checkpoints would resume with these changes. Use another --workdir, or "
        f"resume anyway with {' '.join('--allow-change ' + k for k in differ)} "
        f"(safe to change on resume: {', '.join(SAFE_ON_RESUME)})."
      )
  path.write_text(json.dumps(now, indent=2))


def data_root(config: dict) -> pathlib.Path:
  """The offline archives: --set data_path=..., else $METRICLEARN_DATA, else
  ../shared/data beside the repository (where the tests and CI find them)."""
  root = config.get("data_path") or os.environ.get("METRICLEARN_DATA")
  return pathlib.Path(root or HERE.parents[1] / "shared" / "data")


def _omniglot_folder(config: dict) -> pathlib.Path | None:
  """None (the bundled 28 x 28 pack) unless a data path is set or the size is not
  28; then Lake's archives under the data root."""
  explicit = config.get("data_path") or os.environ.get("METRICLEARN_DATA")
  if not explicit and config.get("image_size", 28) in (None, 28):
    return None
  return data_root(config) / "omniglot"


# ------------------------------------------------------------------ data


def _classes(ds: data.ImageDataset, classes) -> data.ImageDataset:
  return ds.take(np.flatnonzero(np.isin(ds.labels, classes)))


def validation_split(train: data.ImageDataset, config: dict):
  """Holds out ``validation_groups`` whole groups (Omniglot: alphabets; without
  groups, ``validation_classes`` classes, default a fifth and at least 2, so that
  retrieval has something to tell apart) of the training split, always the same ones
  (a permutation of seed 0, whatever the run's seed): (train, validation)."""
  rng = np.random.default_rng(0)
  if train.groups is not None:
    groups = np.unique(train.groups)
    held = rng.permutation(groups)[: config.get("validation_groups", 5)]
    mask = np.isin(train.groups, held)
  else:
    classes = np.unique(train.labels)
    count = config.get("validation_classes") or max(2, len(classes) // 5)
    if not 2 <= count < len(classes):
      raise ValueError(
        f"validation_classes must be in [2, {len(classes) - 1}] (the training split "
        f"has {len(classes)} classes), got {count}."
      )
    held = rng.permutation(classes)[:count]
    mask = np.isin(train.labels, held)
  return train.take(np.flatnonzero(~mask)), train.take(np.flatnonzero(mask))


def load_data(config: dict):
  """(train, held-out test, official one-shot runs or None), class-disjoint."""
  name, size = config["dataset"], config.get("image_size")
  runs = None
  if name == "digits":
    full = data.load("digits")
    train, test = _classes(full, range(5)), _classes(full, range(5, 10))
  elif name == "mnist":
    root = data_root(config)
    train = _classes(data.load_mnist(root / "mnist", "train"), range(5))
    test = _classes(data.load_mnist(root / "mnist", "test"), range(5, 10))
  elif name == "omniglot":
    folder = _omniglot_folder(config)
    split = config.get("train_split", "background")
    train = data.load_omniglot(folder, split, image_size=size)
    test = data.load_omniglot(folder, "evaluation", image_size=size)
    runs = data.load_omniglot_runs(folder, image_size=size)
  else:
    raise ValueError(f"dataset must be 'digits', 'mnist' or 'omniglot', got {name!r}.")
  holdout = config.get("holdout", "test")
  if holdout == "validation":  # the test classes and the official runs stay unseen
    (train, test), runs = validation_split(train, config), None
  elif holdout != "test":
    raise ValueError(f"holdout must be 'test' or 'validation', got {holdout!r}.")
  if config.get("test_classes"):  # the first classes only (smoke runs)
    test = _classes(test, np.unique(test.labels)[: config["test_classes"]])
  if config.get("max_test") and len(test) > config["max_test"]:
    keep = np.random.default_rng(0).choice(len(test), config["max_test"], replace=False)
    test = test.take(np.sort(keep))
  return train, test, runs


def _images(x) -> np.ndarray:
  return np.asarray(data.to_float(jnp.asarray(x)))


def _sampler(config: dict, train: data.ImageDataset, spec: registry.LossSpec):
  """The seeded host sampler the loss needs, and the image keys of its batches."""
  seed, size = config["seed"], config["batch_size"]
  if spec.sampler == "pair":  # batch_size counts images: B/2 pairs, B images a step
    same = config.get("same_alphabet", False)
    return data.pair_batches(train, size // 2, same_group=same, seed=seed), (
      "x1",
      "x2",
    )
  if spec.sampler == "triplet":  # B/3 triplets
    return data.triplet_batches(train, size // 3, seed=seed), (
      "anchor",
      "positive",
      "negative",
    )
  k = config["samples_per_class"]
  p = size // k
  if spec.sampler == "views":  # B/2 items, twice: of distinct classes while there are
    p = min(size // 2, len(np.unique(train.labels)))  # enough, else k items a class
    k = (size // 2) // p
  by_group = config.get("batch_by_group", False)
  return data.balanced_batches(train, p, k, seed=seed, by_group=by_group), ("image",)


def _tensorboard_dir(config: dict, workdir: pathlib.Path) -> pathlib.Path | None:
  """``workdir/tensorboard`` if the run writes TensorBoard scalars: when
  ``config['tensorboard']`` says so, or (None) when TensorBoard is installed."""
  wanted = config.get("tensorboard")
  if wanted is None:
    wanted = importlib.util.find_spec("tensorboard") is not None
  return workdir / "tensorboard" if wanted else None


def make_batches(config: dict, train: data.ImageDataset, spec: registry.LossSpec):
  """An endless, seeded iterator of (augmented) training batches."""
  sampler, keys = _sampler(config, train, spec)
  # proxy losses index classes 0..C-1: map the training labels onto that range
  classes = np.unique(train.labels)
  augment = None
  if config.get("augment") == "koch":
    augment = jax.jit(lambda key, x: data.random_affine(key, x, **data.KOCH_AFFINE))
  key = jax.random.PRNGKey(config["seed"] + 1)

  def batches():
    for step, batch in enumerate(sampler):
      out = {}
      names = ("view1", "view2") if spec.sampler == "views" else keys
      for i, name in enumerate(names):
        x = data.to_float(jnp.asarray(batch[keys[min(i, len(keys) - 1)]]))
        if augment is not None:  # (the two views: two draws of the augmentation)
          x = augment(jax.random.fold_in(jax.random.fold_in(key, step), i), x)
        out[name] = x  # stays on the device
      if spec.sampler == "pair":
        out["similar"] = batch["similar"]
      elif spec.sampler == "balanced":
        out["label"] = np.searchsorted(classes, batch["label"]).astype(np.int32)
      yield out

  return batches(), len(classes)


def with_miner(config: dict, spec: registry.LossSpec) -> registry.LossSpec:
  """The loss with a miner's mask (``config['miner']``, a metriclearn.miners name)."""
  name = config.get("miner")
  if not name:
    return spec
  fn = getattr(miners, name, None) or getattr(miners, f"{name}_miner", None)
  if fn is None or not callable(fn) or name.startswith("_"):
    raise ValueError(f"miner must be a function of metriclearn.miners, got {name!r}.")
  if spec.kind != "batch":
    raise ValueError(
      f"a miner selects pairs of a batch loss; {config['loss']!r} is not."
    )
  options = config.get("miner_kwargs") or {}

  def mined(embeddings, labels, **kwargs):
    relation = {k: kwargs[k] for k in ("axis_name",) if k in kwargs}
    mask = fn(embeddings, labels, **relation, **options)
    return spec.fn(embeddings, labels, mask=mask, **kwargs)

  return dataclasses.replace(spec, fn=mined)


def loss_params(config: dict, spec: registry.LossSpec, key, num_classes: int) -> dict:
  """The loss's learnable arrays, initialised with ``config['loss_init']``'s options."""
  init = config.get("loss_init") or {}
  options = list(inspect.signature(spec.params).parameters)[3:]
  unknown = sorted(set(init) - set(options))
  if unknown:
    raise ValueError(
      f"loss_init {unknown} not an option of loss {config['loss']!r}'s learnable "
      f"arrays; it has {options or 'none'}."
    )
  return spec.params(key, num_classes, config["embedding_dim"], **init)


def make_optimizer(config: dict) -> optax.GradientTransformation:
  """``config``'s optimizer and learning-rate schedule, with gradient clipping."""
  steps, lr = config["steps"], config["learning_rate"]
  warmup = config.get("warmup_steps")
  warmup = min(100, steps // 10) if warmup is None else warmup
  if config["schedule"] == "warmup_cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps)
  elif config["schedule"] == "constant":
    schedule = optax.constant_schedule(lr)
  else:
    raise ValueError(
      f"schedule must be 'warmup_cosine' or 'constant', got {config['schedule']!r}."
    )
  decay = config.get("weight_decay", 0.0)
  optimizers = {
    "adamw": lambda: optax.adamw(schedule, weight_decay=decay),
    "adam": lambda: optax.adam(schedule),
    "sgd": lambda: optax.sgd(schedule, momentum=0.9),
    "lamb": lambda: optax.lamb(schedule, weight_decay=decay),
  }
  if config["optimizer"] not in optimizers:
    raise ValueError(
      f"optimizer must be one of {sorted(optimizers)}, got {config['optimizer']!r}."
    )
  return optax.chain(
    optax.clip_by_global_norm(config.get("clip_norm", 10.0)),
    optimizers[config["optimizer"]](),
  )


# ------------------------------------------------------------------ model


def make_model(config: dict):
  name, dim = config["model"], config["embedding_dim"]
  head = models.EmbeddingHead(dim, normalize=config.get("normalize", True))
  if name == "mlp":
    backbone = models.MLPEncoder(
      hidden=tuple(config.get("hidden", (256, 256))), batch_norm=True
    )
  elif name == "conv4":
    backbone = models.ConvEncoder(filters=config.get("filters", 64))
  elif name == "koch":
    backbone = models.KochTower(padding="SAME", hidden=config.get("hidden", 1024))
  elif name == "resnet":
    backbone = models.ResNet()
  else:
    raise ValueError(f"model must be 'mlp', 'conv4', 'koch' or 'resnet', got {name!r}.")
  return models.Encoder(backbone, head)


# ------------------------------------------------------------------ evaluation


def _one_shot_episodes(emb, labels, *, ways, episodes, seed, groups=None):
  """N-way one-shot accuracy over random episodes of held-out classes (1 query each).

  With ``groups`` (Omniglot: alphabets) every episode's classes come from one group, as
  in Lake et al.'s within-alphabet runs; otherwise from all held-out classes. Classes
  with fewer than two images (possible after ``max_test``) take no part."""
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(labels, return_counts=True)
  classes = classes[counts >= 2]
  pools = [classes]
  if groups is not None:
    group_of = {c: groups[np.flatnonzero(labels == c)[0]] for c in classes}
    pools = [
      pool
      for g in np.unique(groups)
      if len(pool := np.array([c for c in classes if group_of[c] == g])) >= ways
    ]
    if not pools:
      raise ValueError(f"no group of the held-out set has {ways} classes.")
  ways = min(ways, len(classes))
  correct = 0
  for _ in range(episodes):
    chosen = rng.choice(pools[rng.integers(len(pools))], ways, replace=False)
    support, queries = [], []
    for c in chosen:
      i, j = rng.choice(np.flatnonzero(labels == c), 2, replace=False)
      support.append(emb[i])
      queries.append(emb[j])
    d = np.asarray(
      dist.pairwise_euclidean(
        jnp.asarray(np.array(queries)), jnp.asarray(np.array(support))
      )
    )
    correct += int(np.sum(np.argmin(d, axis=1) == np.arange(ways)))
  return correct / (episodes * ways), ways


def _pairs(labels, n, rng):
  """n same-class and n different-class index pairs of the held-out set."""
  i = rng.integers(0, len(labels), 8 * n)
  j = rng.integers(0, len(labels), 8 * n)
  keep = i != j
  i, j = i[keep], j[keep]
  same = labels[i] == labels[j]
  pos = np.flatnonzero(same)[:n]
  neg = np.flatnonzero(~same)[:n]
  if len(pos) < n:  # rare classes: draw positives class by class
    extra = []
    for c in np.unique(labels):
      idx = np.flatnonzero(labels == c)
      if len(idx) > 1:
        extra.append(rng.choice(idx, 2, replace=False))
    extra = np.array(extra)
    take = rng.integers(0, len(extra), n - len(pos))
    i = np.concatenate([i, extra[take, 0]])
    j = np.concatenate([j, extra[take, 1]])
    pos = np.concatenate([pos, len(i) - len(take) + np.arange(len(take))])
  sel = np.concatenate([pos, neg])
  return (
    i[sel],
    j[sel],
    np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)]),
  )


def run_images(runs) -> tuple[np.ndarray, np.ndarray]:
  """The official runs' (training, test) images, run after run: [runs x 20, ...]."""
  flat = lambda x: x.reshape(-1, *x.shape[2:])
  return flat(runs.train_images), flat(runs.test_images)


def official_accuracy(train_emb, test_emb, runs) -> float:
  """Lake's 20 official runs scored from the embeddings of ``run_images(runs)``."""
  shape = (*runs.train_images.shape[:2], -1)
  return evaluation.omniglot_one_shot(
    np.reshape(train_emb, shape), np.reshape(test_emb, shape), runs.answers
  )["accuracy"]


def _official(embed, runs, prepare=_images) -> float:
  """Lake's 20 official runs scored with ``embed`` (``prepare``'d images ->
  embeddings)."""
  tr, te = run_images(runs)
  return official_accuracy(embed(prepare(tr)), embed(prepare(te)), runs)


def raw_pixels(test, runs) -> dict:
  """The baseline of no learning: raw pixels as the embedding."""
  x = _images(test.images).reshape(len(test), -1)
  out = evaluation.retrieval_metrics(x, test.labels)
  metrics = {k: out[k] for k in ("precision_at_1", "r_precision", "map_at_r")}
  if runs is not None:
    metrics["official_20way_one_shot"] = _official(
      lambda x: x.reshape(len(x), -1), runs
    )
  return metrics


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """[n, h, w, c] images moved by (dy, dx) pixels, zeros coming in."""
  h, w = images.shape[1:3]
  pad = ((0, 0), (1, 1), (1, 1)) + ((0, 0),) * (images.ndim - 3)
  return np.pad(images, pad)[:, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def tta_embedder(embed):
  """``embed`` (images -> embeddings) made test-time augmented: the L2-normalised
  mean of the embeddings of the 9 one-pixel shifts of each image."""

  def tta(images):
    views = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    mean = sum(embed(shifted(images, dy, dx)) for dy, dx in views)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

  return tta


def embedder(config, eval_step, state):
  """images -> L2-normalised embeddings; with ``tta`` (test-time augmentation)
  :func:`tta_embedder` of them."""
  embed = functools.partial(training.embed, eval_step, state, batch_size=512)
  return tta_embedder(embed) if config.get("tta") else embed


def evaluate(
  config, state, eval_step, test, runs, *, final: bool, workdir=None, history=None
) -> dict:
  # test-time shifts at the final evaluation only (the curve's points and the
  # untrained baseline are plain embeddings)
  embed = embedder(config if final else {**config, "tta": False}, eval_step, state)
  emb = embed(_images(test.images))
  labels = test.labels
  out = evaluation.retrieval_metrics(emb, labels, recall_ks=(1, 2, 4, 8))
  metrics = {k: out[k] for k in ("precision_at_1", "r_precision", "map_at_r")}
  episodes = dict(ways=config.get("ways", 20), episodes=config.get("episodes", 200))
  acc, ways = _one_shot_episodes(emb, labels, **episodes, seed=0)
  metrics[f"{ways}way_one_shot"] = acc
  if test.groups is not None and config["dataset"] == "omniglot":
    acc, ways = _one_shot_episodes(emb, labels, groups=test.groups, **episodes, seed=0)
    metrics[f"{ways}way_within_alphabet"] = acc
  if runs is not None:
    metrics["official_20way_one_shot"] = _official(embed, runs)
  if not final:
    return metrics
  metrics.update({f"recall_at_{k}": out[f"recall_at_{k}"] for k in (2, 4, 8)})
  metrics["mrr"] = out["mrr"]
  metrics.update(evaluation.clustering_metrics(emb, labels, seed=0))
  i, j, similar = _pairs(labels, 2000, np.random.default_rng(1))
  pair_dist = np.linalg.norm(emb[i] - emb[j], axis=1)
  ver = evaluation.verification_metrics(pair_dist, similar, is_distance=True)
  metrics.update({"roc_auc": ver["auc"], "eer": ver["eer"]})
  if workdir is not None:
    fig = pathlib.Path(workdir) / "figures"
    figures.training_curves(history or [], fig / "training_curves.png")
    figures.embedding_map(emb, labels, fig / "embedding_map.png", names=test)
    figures.distance_histograms(
      pair_dist[similar],
      pair_dist[~similar],
      fig / "distance_histograms.png",
      threshold=ver.get("best_threshold"),
    )
    fpr, tpr, _ = evaluation.roc_curve(pair_dist, similar, is_distance=True)
    figures.roc_figure(fpr, tpr, ver["auc"], fig / "roc.png")
    _retrieval_grid(emb, labels, test.images, fig / "retrieval_grid.png")
  return metrics


def _retrieval_grid(emb, labels, images, path, queries: int = 8, k: int = 6):
  """A few held-out queries beside their nearest held-out neighbours (leave one out:
  a query never finds itself)."""
  picks = np.sort(np.random.default_rng(0).choice(len(labels), queries, replace=False))
  found = np.asarray(evaluation.knn(emb, k=k).indices)[picks]  # -1: no neighbour
  found_labels = np.where(found < 0, -1, labels[found])
  return figures.retrieval_grid(
    images[picks], labels[picks], images[found], found_labels, path
  )


# ------------------------------------------------------------------ the run


def machine() -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": str(jax.devices()[0]),
  }


def train_and_evaluate(
  config: dict,
  workdir: str | os.PathLike,
  *,
  progress: bool = True,
  allow_changes=(),
  resume_step: int | None = None,
) -> dict:
  """Trains on the training classes, evaluates on the held-out classes, writes the
  run's files into ``workdir`` and returns the final metrics. A workdir with
  checkpoints is resumed, if its config.json matches (:func:`check_resume`)."""
  start = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  check_resume(config, workdir, allow_changes)
  spec = with_miner(config, registry.get(config["loss"], **config["loss_kwargs"]))
  train, test, runs = load_data(config)
  batches, num_classes = make_batches(config, train, spec)
  model = make_model(config)
  key = jax.random.PRNGKey(config["seed"])  # raw uint32 key: Orbax saves it as is
  tx = make_optimizer(config)
  example = _images(train.images[:2])
  state = training.create_train_state(
    key,
    model,
    tx,
    example,
    loss_params=loss_params(config, spec, jax.random.fold_in(key, 7), num_classes),
  )
  step = training.make_train_step(
    model, spec.fn, kind=spec.kind, reduction=spec.reduction
  )
  eval_step = training.make_eval_step(model)
  # Reality checks printed beside the result: raw pixels and the untrained encoder.
  baselines = {
    "raw pixels": raw_pixels(test, runs),
    "untrained": evaluate(config, state, eval_step, test, runs, final=False),
  }
  log_path = workdir / "log.jsonl"

  def eval_fn(state, s):
    if s == config["steps"]:
      return {}  # the final evaluation below writes the figures too
    return evaluate(config, state, eval_step, test, runs, final=False)

  try:
    state = training.fit(
      step,
      state,
      batches,
      num_steps=config["steps"],
      checkpoint_dir=workdir / "checkpoints",
      save_every=config["save_every"],
      keep=2,
      eval_fn=eval_fn,
      eval_every=config["eval_every"],
      log_path=log_path,
      log_every=config["log_every"],
      tensorboard_dir=_tensorboard_dir(config, workdir),
      progress=progress,
      resume_step=resume_step,
    )
  except training.NonFiniteLossError as e:
    if e.last_checkpoint is not None:
      e.add_note(
        f"experiments/train.py: resume from checkpoint {e.last_checkpoint} with the "
        "same command plus --set learning_rate=<smaller> --allow-change "
        f"learning_rate (or --resume-from <an earlier step> to go further back)."
      )
    raise
  start_eval = {f"eval/{k}": v for k, v in baselines["untrained"].items()}
  history = [{"step": 0, **start_eval}] + [json.loads(line) for line in open(log_path)]
  metrics = evaluate(
    config, state, eval_step, test, runs, final=True, workdir=workdir, history=history
  )
  history.append(
    {"step": config["steps"], **{f"eval/{k}": v for k, v in metrics.items()}}
  )
  figures.training_curves(history, workdir / "figures" / "training_curves.png")
  # The encoder to keep: parameters and batch statistics, what rebuilds it, the
  # preprocessing of training (uint8 -> float in [0, 1]); no optimizer state.
  inference.export_encoder(
    workdir / "encoder",
    model,
    state,
    input_shape=train.images.shape[1:],
    input_dtype=train.images.dtype,
    metadata={"config": config, "dataset": config["dataset"]},
    overwrite=True,
  )
  result = {
    "metrics": metrics,
    "baselines": baselines,
    "config": config,
    "machine": machine(),
    "wall_time_s": round(time.time() - start, 1),
    "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]) or None,
  }
  (workdir / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
  return result


def format_table(metrics: dict, baselines: dict | None = None) -> str:
  """A Markdown table: the trained encoder's held-out metrics, beside baselines."""
  baselines = baselines or {}
  head = ["metric", *baselines, "trained"]
  rows = [head]
  for k, v in metrics.items():
    cells = [f"{b[k]:.4f}" if k in b else "" for b in baselines.values()]
    rows.append([k, *cells, f"{v:.4f}"])
  widths = [max(len(r[i]) for r in rows) for i in range(len(head))]

  def line(row):
    cells = [
      c.ljust(w) if i == 0 else c.rjust(w)
      for i, (c, w) in enumerate(zip(row, widths, strict=True))
    ]
    return "| " + " | ".join(cells) + " |"

  lines = [line(r) for r in rows]
  lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--config",
    default=str(DEFAULT_CONFIG),
    help="a configuration file (default: the digits main job)",
  )
  parser.add_argument(
    "--workdir",
    default=None,
    help="where the run's files go (default: runs/<config>_s<seed>)",
  )
  parser.add_argument("--seed", type=int, default=None, help="overrides config seed")
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a configuration key (repeatable); every key of the configuration "
    "file and of DEFAULTS can be set",
  )
  parser.add_argument(
    "--allow-change",
    action="append",
    default=[],
    metavar="KEY",
    help="resume a workdir although KEY differs from its config.json (repeatable)",
  )
  parser.add_argument(
    "--resume-from",
    type=int,
    default=None,
    metavar="STEP",
    help="resume from this checkpoint, not the latest (the later ones are deleted)",
  )
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument(
    "--smoke",
    action="store_true",
    help="a few steps and a trimmed evaluation: any configuration in seconds",
  )
  args = parser.parse_args(argv)
  config = load_config(args.config, args.set)
  if args.smoke:
    k = config.get("samples_per_class", 2)
    config.update(SMOKE, batch_size=min(config["batch_size"], 8 * k))
  if args.seed is not None:
    config["seed"] = args.seed
  workdir = args.workdir or (
    pathlib.Path("runs") / f"{pathlib.Path(args.config).stem}_{config['loss']}_"
    f"{config['dataset']}_s{config['seed']}"
  )
  print(
    f"metriclearn: {config['dataset']} / {config['model']} / {config['loss']}, "
    f"{config['steps']} steps, seed {config['seed']} -> {workdir}"
  )
  result = train_and_evaluate(
    config,
    workdir,
    progress=not args.no_progress,
    allow_changes=args.allow_change,
    resume_step=args.resume_from,
  )
  print(f"\nheld-out classes ({result['wall_time_s']} s):")
  print(format_table(result["metrics"], result["baselines"]))
  if "official_20way_one_shot" in result["metrics"]:
    ours = result["metrics"]["official_20way_one_shot"]
    rows = {**LAKE_TABLE, f"this run ({config['model']}, {config['loss']})": ours}
    print("\nLake et al. 2015, 20-way one-shot on the same 20 official runs:")
    for name, acc in sorted(rows.items(), key=lambda kv: kv[1]):
      print(f"  {100 * acc:5.1f} %  {name}")
  print(f"\nwrote {workdir}/metrics.json, log.jsonl, checkpoints/, encoder/, figures/")
  return result


if __name__ == "__main__":
  main()
