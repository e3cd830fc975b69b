"""metriclearn experiments: one command-line entry.

  python experiments/train.py            # the main job: scikit-learn digits, 0-4 train,
                                         # 5-9 held out; < 2 min on a 2-core CPU
  python experiments/train.py --config experiments/configs/omniglot_oneshot.py --seed 1
  python experiments/train.py --config experiments/configs/compare.py \
      --set loss=supcon --set dataset=mnist

A configuration is a Python file with ``get_config() -> dict`` (its docstring states the
command and the result it should reach); ``--set key=value`` overrides a key (values
are Python literals). Every run writes into ``--workdir``: ``metrics.json`` (the final
held-out metrics, the configuration, the machine, the wall time), ``log.jsonl`` (the
training curve), Orbax ``checkpoints/`` (a rerun resumes from them) and ``figures/``
(training curves, a 2-D map of held-out embeddings, pair-distance histograms, ROC).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
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

from metriclearn import data, evaluation, models, training  # noqa: E402
from metriclearn import distances as dist  # noqa: E402

DEFAULT_CONFIG = HERE / "configs" / "digits.py"


# ------------------------------------------------------------------ configuration


def load_config(path: str | os.PathLike, overrides=()) -> dict:
  spec = importlib.util.spec_from_file_location("config", path)
  if spec is None or not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"--config: no configuration file at {path}.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = dict(module.get_config())
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep or key not in config:
      raise ValueError(
        f"--set {item!r}: expected key=value with a key of the configuration "
        f"({', '.join(sorted(config))})."
      )
    try:
      config[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      config[key] = value  # a bare string
  return config


def data_root(config: dict) -> pathlib.Path:
  """The offline data: --set data_path=..., else $METRICLEARN_DATA, else ../shared/data
  beside the repository (where the tests and CI find it)."""
  root = config.get("data_path") or os.environ.get("METRICLEARN_DATA")
  return pathlib.Path(root or HERE.parents[1] / "shared" / "data")


# ------------------------------------------------------------------ data


def _classes(ds: data.ImageDataset, classes) -> data.ImageDataset:
  return ds.take(np.flatnonzero(np.isin(ds.labels, classes)))


def load_data(config: dict):
  """(train, held-out test, official one-shot runs or None), class-disjoint."""
  name, size = config["dataset"], config.get("image_size")
  root = data_root(config)
  runs = None
  if name == "digits":
    full = data.load("digits")
    train, test = _classes(full, range(5)), _classes(full, range(5, 10))
  elif name == "mnist":
    train = _classes(data.load_mnist(root / "mnist", "train"), range(5))
    test = _classes(data.load_mnist(root / "mnist", "test"), range(5, 10))
  elif name == "omniglot":
    folder = root / "omniglot"
    train = data.load_omniglot(
      folder, config.get("train_split", "background"), image_size=size
    )
    test = data.load_omniglot(folder, "evaluation", image_size=size)
    runs = data.load_omniglot_runs(folder, image_size=size)
  else:
    raise ValueError(f"dataset must be 'digits', 'mnist' or 'omniglot', got {name!r}.")
  if config.get("max_test") and len(test) > config["max_test"]:
    keep = np.random.default_rng(0).choice(len(test), config["max_test"], replace=False)
    test = test.take(np.sort(keep))
  return train, test, runs


def _images(x) -> np.ndarray:
  return np.asarray(data.to_float(jnp.asarray(x)))


def make_batches(config: dict, train: data.ImageDataset, spec: registry.LossSpec):
  """An endless, seeded iterator of (augmented) training batches."""
  seed = config["seed"]
  if spec.sampler == "pair":
    # batch_size counts images: B/2 pairs, so every loss encodes B images a step
    sampler = data.pair_batches(
      train,
      config["batch_size"] // 2,
      similar_fraction=0.5,
      same_group=config.get("same_alphabet", False),
      seed=seed,
    )
    keys = ("x1", "x2")
  else:
    k = config["samples_per_class"]
    sampler = data.balanced_batches(
      train,
      config["batch_size"] // k,
      k,
      seed=seed,
      by_group=config.get("batch_by_group", False),
    )
    keys = ("image",)
  # proxy losses index classes 0..C-1: map the training labels onto that range
  classes = np.unique(train.labels)
  augment = None
  if config.get("augment") == "koch":
    affine = jax.jit(lambda key, x: data.random_affine(key, x, **data.KOCH_AFFINE))
    augment = affine
  key = jax.random.PRNGKey(seed + 1)

  def batches():
    for step, batch in enumerate(sampler):
      out = {}
      for name in keys:
        x = data.to_float(jnp.asarray(batch[name]))  # stays on the device
        if augment is not None:
          x = augment(jax.random.fold_in(jax.random.fold_in(key, step), len(out)), x)
        out[name] = x
      if spec.sampler == "pair":
        out["similar"] = batch["similar"]
      else:
        out["label"] = np.searchsorted(classes, batch["label"]).astype(np.int32)
      yield out

  return batches(), len(classes)


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


def _retrieval(emb, labels) -> dict:
  out = evaluation.retrieval_metrics(emb, labels)
  return {k: out[k] for k in ("precision_at_1", "r_precision", "map_at_r")}


def evaluate(
  config, state, eval_step, test, runs, *, final: bool, workdir=None, history=None
) -> dict:
  emb = training.embed(eval_step, state, _images(test.images), batch_size=512)
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
    tr = training.embed(
      eval_step,
      state,
      _images(runs.train_images.reshape(-1, *runs.train_images.shape[2:])),
      batch_size=512,
    )
    te = training.embed(
      eval_step,
      state,
      _images(runs.test_images.reshape(-1, *runs.test_images.shape[2:])),
      batch_size=512,
    )
    shape = (*runs.train_images.shape[:2], -1)
    official = evaluation.omniglot_one_shot(
      tr.reshape(shape), te.reshape(shape), runs.answers
    )
    metrics["official_20way_one_shot"] = official["accuracy"]
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
    sub = np.random.default_rng(0).permutation(len(emb))[:1500]
    figures.embedding_map(
      emb[sub],
      labels[sub],
      fig / "embedding_map.png",
      method="tsne" if len(np.unique(labels)) <= 20 else "pca",
    )
    figures.distance_histograms(
      pair_dist[similar],
      pair_dist[~similar],
      fig / "distance_histograms.png",
      threshold=ver.get("best_threshold"),
    )
    fpr, tpr, _ = evaluation.roc_curve(pair_dist, similar, is_distance=True)
    figures.roc_figure(fpr, tpr, ver["auc"], fig / "roc.png")
  return metrics


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
  config: dict, workdir: str | os.PathLike, *, progress: bool = True
) -> dict:
  """Trains on the training classes, evaluates on the held-out classes, writes the
  run's files into ``workdir`` and returns the final metrics."""
  start = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  spec = registry.get(config["loss"])
  train, test, runs = load_data(config)
  batches, num_classes = make_batches(config, train, spec)
  model = make_model(config)
  key = jax.random.PRNGKey(config["seed"])  # raw uint32 key: Orbax saves it as is
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, config["learning_rate"], min(100, config["steps"] // 10), config["steps"]
  )
  tx = optax.chain(
    optax.clip_by_global_norm(10.0),
    optax.adamw(schedule, weight_decay=config.get("weight_decay", 0.0)),
  )
  example = _images(train.images[:2])
  state = training.create_train_state(
    key,
    model,
    tx,
    example,
    loss_params=spec.params(
      jax.random.fold_in(key, 7), num_classes, config["embedding_dim"]
    ),
  )
  step = training.make_train_step(model, spec.fn, kind=spec.kind)
  eval_step = training.make_eval_step(model)
  # Reality checks printed beside the result: raw pixels and the untrained encoder.
  baselines = {
    "raw pixels": _retrieval(_images(test.images).reshape(len(test), -1), test.labels),
    "untrained": evaluate(config, state, eval_step, test, runs, final=False),
  }
  log_path = workdir / "log.jsonl"

  def eval_fn(state, s):
    if s == config["steps"]:
      return {}  # the final evaluation below writes the figures too
    return evaluate(config, state, eval_step, test, runs, final=False)

  state = training.fit(
    step,
    state,
    batches,
    num_steps=config["steps"],
    checkpoint_dir=workdir / "checkpoints",
    save_every=config.get("save_every", 500),
    keep=2,
    eval_fn=eval_fn,
    eval_every=config.get("eval_every", 250),
    log_path=log_path,
    log_every=10,
    progress=progress,
  )
  start_eval = {f"eval/{k}": v for k, v in baselines["untrained"].items()}
  history = [{"step": 0, **start_eval}] + [json.loads(line) for line in open(log_path)]
  metrics = evaluate(
    config, state, eval_step, test, runs, final=True, workdir=workdir, history=history
  )
  history.append(
    {"step": config["steps"], **{f"eval/{k}": v for k, v in metrics.items()}}
  )
  figures.training_curves(history, workdir / "figures" / "training_curves.png")
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
    help="override a configuration key (repeatable)",
  )
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  config = load_config(args.config, args.set)
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
  result = train_and_evaluate(config, workdir, progress=not args.no_progress)
  print(f"\nheld-out classes ({result['wall_time_s']} s):")
  print(format_table(result["metrics"], result["baselines"]))
  print(f"\nwrote {workdir}/metrics.json, log.jsonl, checkpoints/, figures/")
  return result


if __name__ == "__main__":
  main()
