"""Figures every run writes: training curves, a 2-D map of held-out embeddings,
positive/negative distance histograms and the verification ROC curve (PNG files)."""

from __future__ import annotations

import pathlib

import matplotlib

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
  embeddings: np.ndarray, labels: np.ndarray, path, *, method: str = "tsne", seed=0
) -> pathlib.Path:
  """Held-out embeddings projected to 2-D (t-SNE or PCA), coloured by class."""
  embeddings = np.asarray(embeddings, np.float64)
  if method == "tsne" and len(embeddings) > 5:
    perplexity = min(30.0, (len(embeddings) - 1) / 3)
    xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
      embeddings
    )
  else:
    xy = PCA(2, random_state=seed).fit_transform(embeddings)
  fig, ax = plt.subplots(figsize=(5, 5))
  classes = np.unique(labels)
  cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "nipy_spectral")
  for i, c in enumerate(classes):
    pts = xy[labels == c]
    color = cmap(i if len(classes) <= 10 else i / max(len(classes) - 1, 1))
    ax.scatter(pts[:, 0], pts[:, 1], s=6, color=color, label=str(c))
  if len(classes) <= 10:
    ax.legend(fontsize=7, markerscale=2, title="class")
  ax.set(title=f"held-out embeddings ({method.upper()})", xticks=[], yticks=[])
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
  """Verification ROC curve of held-out pairs, with its AUC."""
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.plot(fpr, tpr, lw=1.5, label=f"AUC = {auc:.4f}")
  ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
  ax.set(
    xlabel="false accept rate", ylabel="true accept rate", title="verification ROC"
  )
  ax.legend(loc="lower right")
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
    ax.text(right + 0.4, yi, f"{100 * v:.1f}", va="center", fontsize=8)
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
