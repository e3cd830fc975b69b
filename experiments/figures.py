"""Figures every run writes: training curves, a 2-D map of held-out embeddings,
positive/negative distance histograms, the verification ROC curve and a retrieval grid
(PNG files). Each takes a fraction of a second to a few seconds (the 2-D map projects a
few hundred points)."""

from __future__ import annotations

import pathlib

try:
  import matplotlib
except ImportError as e:  # an extra: the library itself never draws
  raise ImportError(
    f"experiments/ draws its figures with matplotlib ({e}): "
    "pip install -e '.[experiments]'"
  ) from e

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def training_curves(history: list[dict], path) -> pathlib.Path:
  """Loss against step (left) and every evaluation metric against step (right)."""
  fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(10, 3.6))
  steps = [h["step"] for h in history if "loss" in h]
  ax_loss.plot(steps, [h["loss"] for h in history if "loss" in h], lw=1)
  ax_loss.set(xlabel="step", ylabel="training loss", title="training loss")
  evals = [h for h in history if any(k.startswith("eval/") for k in h)]
  keys = [k for h in evals for k in h if k.startswith("eval/")]
  # the metrics followed during training (the final evaluation adds more, once)
  for key in sorted({k for k in keys if keys.count(k) > 1}):
    pts = [(h["step"], h[key]) for h in evals if key in h]
    ax_eval.plot(*zip(*pts, strict=True), marker="o", ms=3, label=key[5:])
  ax_eval.set(xlabel="step", ylabel="held-out metric", title="held-out classes")
  if ax_eval.lines:
    ax_eval.legend(fontsize=8)
  return _save(fig, path)


def embedding_map(
  embeddings: np.ndarray,
  labels: np.ndarray,
  path,
  *,
  names=None,
  max_classes: int = 10,
  method: str = "tsne",
  seed: int = 0,
) -> pathlib.Path:
  """Held-out embeddings of a few classes projected to 2-D (t-SNE, or PCA), coloured
  by class with a legend: ``max_classes`` classes drawn with a fixed seed, so that the
  map is legible and takes seconds whatever the size of the held-out set. ``names``:
  a dataset whose ``class_names`` (by label id) name the legend's classes."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  classes = np.sort(rng.permutation(classes)[:max_classes])
  keep = np.isin(labels, classes)
  x, labels = np.asarray(embeddings, np.float64)[keep], labels[keep]
  if method == "tsne" and len(x) > 5:
    perplexity = min(30.0, (len(x) - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
    xy = tsne.fit_transform(x)
  else:
    method, xy = "pca", PCA(2, random_state=seed).fit_transform(x)
  class_names = getattr(names, "class_names", None)
  fig, ax = plt.subplots(figsize=(7, 5))
  cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
  for i, c in enumerate(classes):
    pts = xy[labels == c]
    label = class_names[c] if class_names is not None else str(c)
    ax.scatter(pts[:, 0], pts[:, 1], s=14, color=cmap(i % cmap.N), label=label)
  ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1, 0.5))
  ax.set(
    title=f"held-out embeddings of {len(classes)} classes ({method.upper()})",
    xticks=[],
    yticks=[],
  )
  return _save(fig, path)


def distance_histograms(
  pos_dist: np.ndarray, neg_dist: np.ndarray, path, *, threshold: float | None = None
) -> pathlib.Path:
  """Histograms of positive and negative pair distances (density, shared bins)."""
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  bins = np.histogram_bin_edges(np.concatenate([pos_dist, neg_dist]), bins=60)
  ax.hist(neg_dist, bins=bins, density=True, alpha=0.6, label="different class")
  ax.hist(pos_dist, bins=bins, density=True, alpha=0.6, label="same class")
  if threshold is not None:
    ax.axvline(threshold, color="k", ls="--", lw=1, label="best threshold")
  ax.set(xlabel="distance", ylabel="density", title="held-out pair distances")
  ax.legend(fontsize=8)
  return _save(fig, path)


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auc: float, path) -> pathlib.Path:
  """Verification ROC curve of held-out pairs, with its AUC, on a log false-accept
  axis (where the operating points of verification lie)."""
  fpr, tpr = np.asarray(fpr), np.asarray(tpr)
  floor = max(float(np.min(fpr[fpr > 0], initial=1.0)), 1e-6)
  fig, ax = plt.subplots(figsize=(4.8, 4.2))
  ax.plot(np.maximum(fpr, floor), tpr, lw=1.5, label=f"AUC = {auc:.4f}")
  grid = np.logspace(np.log10(floor), 0, 50)
  ax.plot(grid, grid, color="grey", ls=":", lw=1, label="chance")
  ax.set_xscale("log")
  ax.set(
    xlim=(floor, 1),
    ylim=(0, 1.01),
    xlabel="false accept rate (log)",
    ylabel="true accept rate",
    title="verification ROC",
  )
  ax.legend(loc="lower right")
  return _save(fig, path)


def retrieval_grid(
  queries: np.ndarray,
  query_labels: np.ndarray,
  neighbours: np.ndarray,
  neighbour_labels: np.ndarray,
  path,
  *,
  title: str = "nearest neighbours (green: same class, red: other)",
) -> pathlib.Path:
  """Each query image (left column) beside its nearest neighbours ``[q, k, ...]``,
  each framed green when it is of the query's class and red when not (a label of -1:
  an empty slot)."""
  q, k = np.asarray(neighbour_labels).shape
  fig, axes = plt.subplots(q, k + 1, figsize=(1.1 * (k + 1), 1.15 * q), squeeze=False)
  show = lambda ax, img: ax.imshow(np.squeeze(img), cmap="gray_r", vmin=0, vmax=255)
  for row in range(q):
    show(axes[row, 0], queries[row])
    for col in range(k):
      ax = axes[row, col + 1]
      if neighbour_labels[row, col] < 0:
        ax.set_visible(False)
        continue
      show(ax, neighbours[row, col])
      same = neighbour_labels[row, col] == query_labels[row]
      for side in ax.spines.values():
        side.set(color="tab:green" if same else "tab:red", linewidth=3)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0, 0].set_title("query", fontsize=8)
  for col in range(k):
    axes[0, col + 1].set_title(f"#{col + 1}", fontsize=8)
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def accuracy_bars(
  labels: list[str], values: list[float], points: list[list[float]], path, *, highlight
) -> pathlib.Path:
  """Horizontal bars of accuracy (in %), one per method; dots: per-seed values."""
  fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(labels) + 1.2))
  y = np.arange(len(labels))[::-1]
  colors = ["tab:orange" if highlight in lab else "tab:gray" for lab in labels]
  ax.barh(y, 100 * np.asarray(values), color=colors, alpha=0.8)
  for yi, pts in zip(y, points, strict=True):
    ax.plot(100 * np.asarray(pts), [yi] * len(pts), "k.", ms=5)
  for yi, v, pts in zip(y, values, points, strict=True):
    right = 100 * max([v, *pts])
    ax.text(right + 0.4, yi, f"{round(100 * v, 2):g}", va="center", fontsize=8)
  lo = max(0.0, 100 * min(values) - 10)
  ax.set(yticks=y, yticklabels=labels, xlim=(lo, 100), xlabel="accuracy, %")
  ax.tick_params(axis="y", labelsize=8)
  ax.set_title("Omniglot 20-way one-shot, official runs", fontsize=10)
  return _save(fig, path)


def grouped_bars(
  values: dict[str, dict[str, list[float]]], path, *, ylabel: str
) -> pathlib.Path:
  """One group of bars per dataset, one bar per method (mean), dots for seeds."""
  methods = list(dict.fromkeys(m for d in values.values() for m in d))
  fig, axes = plt.subplots(1, len(values), figsize=(5 * len(values), 3.8))
  axes = np.atleast_1d(axes)
  for ax, (dataset, by_method) in zip(axes, values.items(), strict=True):
    x = np.arange(len(methods))
    means = [np.mean(by_method.get(m, [np.nan])) for m in methods]
    ax.bar(x, means, color="tab:blue", alpha=0.75)
    for xi, m in zip(x, methods, strict=True):
      pts = by_method.get(m, [])
      ax.plot([xi] * len(pts), pts, "k.", ms=4)
    ax.set_xticks(x, methods, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=dataset)
  return _save(fig, path)
