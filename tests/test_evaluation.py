"""Evaluation: blockwise k-NN and retrieval metrics against hand arithmetic and a
brute-force NumPy reference (full sort), clustering, verification, few-shot and the
official Omniglot one-shot runs."""

import io
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metriclearn import evaluation as E

# ----------------------------------------------------------------------------------
# Brute-force references: the full distance matrix and a full stable sort per query.


def _np_scores(q, r, distance):
  """[n, m] float64 ranking keys, smaller = nearer (ties: smaller index)."""
  q, r = np.asarray(q, np.float64), np.asarray(r, np.float64)
  if distance in ("euclidean", "squared_euclidean"):
    return ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
  if distance == "cosine":
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True)
    return 1.0 - qn @ rn.T
  return -(q @ r.T)  # dot: larger similarity = nearer


def _np_knn(q, r, k, distance, exclude_self=False, ref_valid=None):
  d = _np_scores(q, r, distance)
  n, m = d.shape
  idx = np.full((n, k), -1)
  for i in range(n):
    cand = [j for j in range(m) if (ref_valid is None or ref_valid[j])]
    cand = [j for j in cand if not (exclude_self and j == i)]
    order = sorted(cand, key=lambda j, i=i: (d[i, j], j))[:k]
    idx[i, : len(order)] = order
  return idx, d


def _np_retrieval(q, ql, r, rl, distance, exclude_self, ks, max_r=None):
  """Per-query metrics from the paper formulas, averaged over the scored queries."""
  d = _np_scores(q, r, distance)
  rows = []
  counts = [
    sum(rl[j] == ql[i] and not (exclude_self and j == i) for j in range(len(r)))
    for i in range(len(q))
  ]
  k = max([max(counts)] + list(ks)) if max_r is None else max([max_r] + list(ks))
  for i in range(len(q)):
    if ql[i] < 0 or counts[i] == 0:
      continue
    cand = [j for j in range(len(r)) if rl[j] >= 0 and not (exclude_self and j == i)]
    order = sorted(cand, key=lambda j, i=i: (d[i, j], j))
    rel = [bool(rl[j] == ql[i]) for j in order]
    big_r = counts[i] if max_r is None else min(counts[i], max_r)
    ap = sum(sum(rel[: t + 1]) / (t + 1) for t in range(big_r) if rel[t]) / big_r
    first = rel.index(True) + 1
    rows.append(
      [rel[0], sum(rel[:big_r]) / big_r, ap, 1 / first if first <= k else 0.0]
      + [any(rel[:kk]) for kk in ks]
    )
  mean = np.mean(np.asarray(rows, np.float64), axis=0)
  out = {"precision_at_1": mean[0], "r_precision": mean[1], "map_at_r": mean[2]}
  out["mrr"] = mean[3]
  out.update({f"recall_at_{kk}": mean[4 + t] for t, kk in enumerate(ks)})
  return out


def _ints(rng, shape):
  """Small integer-valued float32 embeddings: distances are exact and ties common."""
  return rng.integers(-2, 3, size=shape).astype(np.float32)


# ----------------------------------------------------------------------------------
# k nearest neighbours.


def test_knn_ties_go_to_the_smaller_index_across_blocks():
  # One query at 0; references at 1, -1, 1, 0, 2: distances 1, 1, 1, 0, 2.
  # Nearest first: ref 3 (0), then refs 0, 1, 2 (all 1, by index), then ref 4 (2).
  q = jnp.array([[0.0]])
  r = jnp.array([[1.0], [-1.0], [1.0], [0.0], [2.0]])
  for ref_block in (1, 2, 3, 5):  # ties split over blocks; 2 and 3 do not divide 5
    got = E.knn(q, r, k=5, ref_block=ref_block)
    assert got.indices.tolist() == [[3, 0, 1, 2, 4]]
    np.testing.assert_allclose(got.values, [[0.0, 1.0, 1.0, 1.0, 2.0]])
  # k beyond the references: the extra slots hold index -1 and distance inf.
  got = E.knn(q, r, k=7, ref_block=2)
  assert got.indices.tolist() == [[3, 0, 1, 2, 4, -1, -1]]
  assert np.isinf(got.values[0, 5:]).all()
  # ref_valid removes refs 0 and 3; dot similarity with the query 1 ranks largest
  # first: ref 4 -> 2, ref 2 -> 1, ref 1 -> -1.
  got = E.knn(q + 1.0, r, k=3, distance="dot", ref_valid=jnp.array([0, 1, 1, 0, 1]))
  assert got.indices.tolist() == [[4, 2, 1]]
  np.testing.assert_allclose(got.values, [[2.0, 1.0, -1.0]])


def test_knn_excludes_the_query_itself():
  x = jnp.array([[0.0], [1.0], [3.0], [3.0]])
  # Leave-one-out: 0 -> 1; 1 -> 0; 2 -> 3 (its twin, distance 0); 3 -> 2.
  assert E.knn(x, k=1).indices.ravel().tolist() == [1, 0, 3, 2]
  # The same array passed as references is not excluded unless asked.
  assert E.knn(x, x, k=1).indices.ravel().tolist() == [0, 1, 2, 2]
  assert E.knn(x, x, k=1, exclude_self=True).indices.ravel().tolist() == [1, 0, 3, 2]


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "dot"])
def test_knn_matches_brute_force_with_ties(distance):
  rng = np.random.default_rng(0)
  x, r = _ints(rng, (37, 3)), _ints(rng, (53, 3))  # 125 distinct points: many ties
  want_self, d_self = _np_knn(x, x, 9, distance, exclude_self=True)
  want, d = _np_knn(x, r, 9, distance)
  for query_block, ref_block in ((512, 8192), (5, 7), (1, 11)):
    got = E.knn(x, k=9, distance=distance, query_block=query_block, ref_block=ref_block)
    np.testing.assert_array_equal(got.indices, want_self)
    blocks = dict(query_block=query_block, ref_block=ref_block)
    got = E.knn(x, r, k=9, distance=distance, **blocks)
    np.testing.assert_array_equal(got.indices, want)
  values = np.take_along_axis(d, want, axis=1)
  if distance == "euclidean":
    values = np.sqrt(values)
  elif distance == "dot":
    values = -values
  np.testing.assert_allclose(got.values, values, rtol=1e-6)


def test_knn_cosine_float64_and_float32():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((41, 6))
  want, d = _np_knn(x, x, 6, "cosine", exclude_self=True)
  with jax.enable_x64(True):
    got = E.knn(jnp.asarray(x), k=6, distance="cosine", query_block=8, ref_block=13)
    assert got.values.dtype == jnp.float64
    np.testing.assert_array_equal(got.indices, want)
    np.testing.assert_allclose(got.values, np.take_along_axis(d, want, 1), rtol=1e-5)
  got = E.knn(x.astype(jnp.bfloat16), k=6, distance="cosine")  # computed in float32
  assert got.values.dtype == jnp.float32
  got = E.knn(x.astype(np.float32), k=6, distance="cosine", ref_block=13)
  np.testing.assert_array_equal(got.indices, want)
  np.testing.assert_allclose(got.values, np.take_along_axis(d, want, 1), atol=1e-4)


def test_knn_errors():
  x = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match="distance"):
    E.knn(x, k=1, distance="manhattan")
  with pytest.raises(ValueError, match="queries"):
    E.knn(jnp.zeros(4), k=1)
  with pytest.raises(ValueError, match="embedding size"):
    E.knn(x, jnp.zeros((5, 2)), k=1)
  with pytest.raises(ValueError, match="exclude_self"):
    E.knn(x, jnp.zeros((5, 3)), k=1, exclude_self=True)
  with pytest.raises(ValueError, match="k must be"):
    E.knn(x, k=0)
  with pytest.raises(ValueError, match="ref_valid"):
    E.knn(x, k=1, ref_valid=jnp.ones(3, bool))


# ----------------------------------------------------------------------------------
# Retrieval metrics.


def test_retrieval_hand_computed_separate_references():
  # References at 1, 2, 3, 4 with labels 0, 1, 0, 0; two queries, both at 0.
  r = jnp.array([[1.0], [2.0], [3.0], [4.0]])
  rl = jnp.array([0, 1, 0, 0])
  q = jnp.array([[0.0], [0.0], [0.0], [0.0]])
  ql = jnp.array([0, 1, 7, -1])  # label 7 has no reference, -1 is padding: not scored
  got = E.retrieval_metrics(q, ql, ref_embeddings=r, ref_labels=rl, recall_ks=(1, 2))
  # Query label 0: R = 3, relevance by rank [1, 0, 1, 1].
  #   MAP@R = (P(1)*1 + P(2)*0 + P(3)*1) / R = (1 + 0 + 2/3) / 3 = 5/9
  #   R-precision = (1 + 0 + 1) / 3 = 2/3; P@1 = 1; Recall@1 = Recall@2 = 1; RR = 1
  # Query label 1: R = 1, relevance [0, 1, 0, 0].
  #   MAP@R = R-precision = rel(1) / 1 = 0; P@1 = 0; Recall@1 = 0; Recall@2 = 1;
  #   RR = 1/2
  want = {
    "precision_at_1": (1 + 0) / 2,
    "recall_at_1": (1 + 0) / 2,
    "recall_at_2": (1 + 1) / 2,
    "r_precision": (2 / 3 + 0) / 2,
    "map_at_r": (5 / 9 + 0) / 2,
    "mrr": (1 + 1 / 2) / 2,
  }
  assert list(got) == list(want)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-6), key
  # max_r = 1 caps R: label 0 -> MAP@R = R-prec = rel(1) = 1; label 1 -> 0.
  capped = E.retrieval_metrics(q, ql, ref_embeddings=r, ref_labels=rl, max_r=1)
  assert capped["map_at_r"] == pytest.approx(0.5)
  assert capped["r_precision"] == pytest.approx(0.5)


def test_retrieval_hand_computed_leave_one_out_with_a_tie():
  x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
  labels = jnp.array([0, 0, 1, 0])
  got = E.retrieval_metrics(x, labels, recall_ks=(1, 2))
  # item 0 (R = 2): neighbours 1 (lab 0), 2 (lab 1), 3 (lab 0) -> rel [1, 0, 1]
  #   AP@R = (1 + 0) / 2 = 1/2, R-prec = 1/2, P@1 = 1, RR = 1
  # item 1 (R = 2): items 0 and 2 tie at distance 1 -> 0 first -> rel [1, 0, 1]
  #   same as item 0
  # item 2: label 1 has no other member: R = 0, not scored
  # item 3 (R = 2): neighbours 2 (d 8, lab 1), 1 (d 9), 0 (d 10) -> rel [0, 1, 1]
  #   AP@R = (0 + P(2) * 1) / 2 = (1/2) / 2 = 1/4, R-prec = 1/2, P@1 = 0, RR = 1/2
  assert got["precision_at_1"] == pytest.approx(2 / 3)
  assert got["recall_at_1"] == pytest.approx(2 / 3)
  assert got["recall_at_2"] == pytest.approx(1.0)
  assert got["r_precision"] == pytest.approx(1 / 2)
  assert got["map_at_r"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 4) / 3)
  assert got["mrr"] == pytest.approx((1 + 1 + 1 / 2) / 3)
  # The per-metric functions agree with the dict.
  assert E.precision_at_1(x, labels) == pytest.approx(2 / 3)
  assert E.recall_at_k(x, labels, 2) == pytest.approx(1.0)
  assert E.r_precision(x, labels) == pytest.approx(1 / 2)
  assert E.map_at_r(x, labels) == pytest.approx(5 / 12)
  assert E.mean_reciprocal_rank(x, labels) == pytest.approx(5 / 6)


def test_retrieval_matches_brute_force():
  rng = np.random.default_rng(2)
  x = _ints(rng, (61, 3))
  labels = rng.integers(0, 5, size=61)
  labels[[3, 17, 40]] = -1  # padding: neither scored nor a neighbour
  r, rl = _ints(rng, (45, 3)), rng.integers(0, 6, size=45)
  ks = (1, 3, 8)
  want_self = _np_retrieval(x, labels, x, labels, "euclidean", True, ks)
  want_refs = _np_retrieval(x, labels, r, rl, "euclidean", False, ks)
  for query_block, ref_block in ((512, 8192), (7, 9), (16, 1)):
    kw = dict(recall_ks=ks, query_block=query_block, ref_block=ref_block)
    got = E.retrieval_metrics(x, labels, **kw)
    assert got == pytest.approx(want_self, rel=1e-6)
    got = E.retrieval_metrics(x, labels, ref_embeddings=r, ref_labels=rl, **kw)
    assert got == pytest.approx(want_refs, rel=1e-6)
  want = _np_retrieval(x, labels, x, labels, "euclidean", True, ks, max_r=4)
  assert E.retrieval_metrics(x, labels, recall_ks=ks, max_r=4) == pytest.approx(want)
  # Cosine on continuous data (no exact ties).
  y = rng.standard_normal((50, 5))
  yl = rng.integers(0, 4, size=50)
  want = _np_retrieval(y, yl, y, yl, "cosine", True, ks)
  got = E.retrieval_metrics(y, yl, distance="cosine", recall_ks=ks, ref_block=16)
  assert got == pytest.approx(want, rel=1e-6)


def test_retrieval_errors():
  x = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match="labels"):
    E.retrieval_metrics(x, jnp.array([0, 1, 1]))
  with pytest.raises(TypeError, match="labels"):
    E.retrieval_metrics(x, jnp.array([0.0, 1.0, 1.0, 0.0]))
  with pytest.raises(ValueError, match="ref_labels"):
    E.retrieval_metrics(x, jnp.array([0, 0, 1, 1]), ref_embeddings=x)
  with pytest.raises(ValueError, match="no query"):
    E.retrieval_metrics(x, jnp.array([0, 1, 2, -1]))
  with pytest.raises(ValueError, match="embedding size"):
    refs = dict(ref_embeddings=jnp.zeros((3, 5)), ref_labels=jnp.array([0, 1, 1]))
    E.retrieval_metrics(x, jnp.array([0, 0, 1, 1]), **refs)
  with pytest.raises(ValueError, match="recall_ks"):
    E.retrieval_metrics(x, jnp.array([0, 0, 1, 1]), recall_ks=(0,))


# ----------------------------------------------------------------------------------
# Clustering.


def test_clustering_perfect_clusters_give_one():
  rng = np.random.default_rng(3)
  centres = 20.0 * rng.standard_normal((4, 8))
  labels = np.repeat(np.arange(4), 10)
  x = centres[labels] + 0.01 * rng.standard_normal((40, 8))
  got = E.clustering_metrics(x, labels, seed=0)
  assert got["nmi"] == pytest.approx(1.0) and got["ami"] == pytest.approx(1.0)
  # Padding rows are left out: far-away junk labelled -1 changes nothing.
  x_pad = np.concatenate([x, 1e3 * np.ones((3, 8))])
  labels_pad = np.concatenate([labels, [-1, -1, -1]])
  assert E.clustering_metrics(x_pad, labels_pad)["nmi"] == pytest.approx(1.0)
  # Cosine clusters the directions: scaling rows changes nothing.
  scaled = x * rng.uniform(0.5, 5.0, size=(40, 1))
  assert E.clustering_metrics(scaled, labels, distance="cosine")["nmi"] == (
    pytest.approx(1.0)
  )
  # One cluster for two classes: the assignment carries no information.
  assert E.clustering_metrics(x, labels, num_clusters=1)["nmi"] == pytest.approx(0.0)
  with pytest.raises(ValueError, match="num_clusters"):
    E.clustering_metrics(x, labels, num_clusters=0)


# ----------------------------------------------------------------------------------
# Verification.


def test_verification_separable_pairs():
  scores = [0.9, 0.8, 0.2, 0.1]
  similar = [True, True, False, False]
  got = E.verification_metrics(scores, similar, fars=(0.0, 0.5))
  # Every similar pair outscores every dissimilar one.
  assert got["auc"] == 1.0 and got["eer"] == 0.0
  assert got["tar_at_far_0"] == 1.0 and got["tar_at_far_0.5"] == 1.0
  # Accept at score >= 0.8: all four right; 0.8 is the strictest such threshold.
  assert got["best_accuracy"] == 1.0 and got["best_threshold"] == 0.8


def test_verification_symmetric_case_and_distances():
  pos, neg = [0.1, 0.6, 0.7, 0.8], [0.2, 0.3, 0.4, 0.9]
  scores, similar = np.array(pos + neg), np.array([1] * 4 + [0] * 4)
  # Accept at >= 0.6: 3 of 4 similar accepted (FRR 1/4), 1 of 4 dissimilar accepted
  # (the 0.9: FAR 1/4) -> EER = 1/4.
  assert E.equal_error_rate(scores, similar) == pytest.approx(0.25)
  # AUC: 0.6, 0.7, 0.8 each beat 3 negatives, 0.1 beats none -> 9 / 16.
  assert E.roc_auc(scores, similar) == pytest.approx(9 / 16)
  # FAR <= 1/4 allows the 0.6 threshold (TAR 3/4); FAR 0 only accepts nothing.
  assert E.tar_at_far(scores, similar, 0.25) == pytest.approx(0.75)
  assert E.tar_at_far(scores, similar, 0.0) == 0.0
  # Best accuracy at 0.6: 3 TP + 3 TN of 8.
  assert E.best_threshold_accuracy(scores, similar) == pytest.approx((0.75, 0.6))
  # The same as distances d = 1 - s: accept when d <= 0.4.
  dist = 1.0 - scores
  assert E.equal_error_rate(dist, similar, is_distance=True) == pytest.approx(0.25)
  assert E.roc_auc(dist, similar, is_distance=True) == pytest.approx(9 / 16)
  assert E.best_threshold_accuracy(dist, similar, is_distance=True) == (
    pytest.approx((0.75, 0.4))
  )
  far, tar, thresholds = E.roc_curve(dist, similar, is_distance=True)
  assert far[0] == 0.0 and tar[-1] == 1.0 and np.all(np.diff(thresholds) >= 0)
  # Interpolated EER: similar [5, 2], dissimilar [4, 3, 1]. At >= 4: FAR 1/3, FRR 1/2;
  # at >= 3: FAR 2/3, FRR 1/2. FRR - FAR goes 1/6 -> -1/6: halfway, FAR = 1/2.
  eer = E.equal_error_rate([5.0, 2.0, 4.0, 3.0, 1.0], [1, 1, 0, 0, 0])
  assert eer == pytest.approx(0.5)


def test_verification_errors():
  with pytest.raises(ValueError, match="both"):
    E.roc_auc([0.1, 0.2], [True, True])
  with pytest.raises(ValueError, match="same length"):
    E.roc_auc([0.1, 0.2], [True])
  with pytest.raises(ValueError, match="far"):
    E.tar_at_far([0.1, 0.2], [True, False], 1.5)


# ----------------------------------------------------------------------------------
# Few-shot.


def test_few_shot_prototype_and_nearest_neighbor():
  # 3-way 2-shot on a line: class 0 at {0, 2} (prototype 1), class 1 at {3, 9}
  # (prototype 6), class 2 at {10, 12} (prototype 11).
  support = jnp.array([[0.0], [2.0], [3.0], [9.0], [10.0], [12.0]])
  support_labels = jnp.array([0, 0, 1, 1, 2, 2])
  queries = jnp.array([[2.6], [8.9], [0.0]])
  query_labels = jnp.array([1, 1, 0])
  # 2.6: prototypes at distance 1.6 (class 0), 3.4 (class 1) -> 0;
  #      nearest example 3 (0.4, class 1) beats 2 (0.6, class 0) -> 1.
  # 8.9: prototypes 6 (2.9) vs 11 (2.1) -> 2; nearest example 9 (0.1) -> 1.
  # 0.0: class 0 both ways.
  proto = E.few_shot_predict(support, support_labels, queries)
  nn = E.few_shot_predict(support, support_labels, queries, method="nearest_neighbor")
  assert proto.tolist() == [0, 2, 0] and nn.tolist() == [1, 1, 0]
  assert E.few_shot_accuracy(support, support_labels, queries, query_labels) == (
    pytest.approx(1 / 3)
  )
  assert E.few_shot_accuracy(
    support, support_labels, queries, query_labels, method="nearest_neighbor"
  ) == pytest.approx(1.0)
  # Leading episode axes: the same episode twice, mirrored the second time.
  s2 = jnp.stack([support, -support])
  q2 = jnp.stack([queries, -queries])
  l2 = jnp.stack([support_labels, support_labels])
  assert E.few_shot_predict(s2, l2, q2).tolist() == [[0, 2, 0], [0, 2, 0]]
  assert jax.vmap(E.few_shot_predict)(s2, l2, q2).tolist() == [[0, 2, 0], [0, 2, 0]]
  # Ties go to the first support example: a query halfway between two classes.
  tie = E.few_shot_predict(
    jnp.array([[0.0], [2.0]]), jnp.array([5, 3]), jnp.ones((1, 1))
  )
  assert tie.tolist() == [5]
  with pytest.raises(ValueError, match="method"):
    E.few_shot_predict(support, support_labels, queries, method="svm")
  with pytest.raises(ValueError, match="support_labels"):
    E.few_shot_predict(support, support_labels[:3], queries)
  with pytest.raises(ValueError, match="query_labels"):
    E.few_shot_accuracy(support, support_labels, queries, query_labels[:2])


def test_omniglot_scorer_on_arrays():
  # Two runs of 4-way one-shot. Run 0: the test items are the training items in
  # reverse order (all right). Run 1: item 3 is nearest training class 0 but its
  # answer is 3 (1 of 4 wrong).
  train = jnp.stack([jnp.eye(4), jnp.eye(4)])
  test = jnp.stack([jnp.eye(4)[::-1], jnp.eye(4)[jnp.array([0, 1, 2, 0])]])
  answers = jnp.array([[3, 2, 1, 0], [0, 1, 2, 3]])
  got = E.omniglot_one_shot(train, test, answers)
  np.testing.assert_allclose(got["run_errors"], [0.0, 0.25])
  assert got["error"] == pytest.approx(0.125) and got["accuracy"] == pytest.approx(
    0.875
  )
  with pytest.raises(ValueError, match="answers"):
    E.omniglot_one_shot(train, test, answers[:, :3])


def _read_all_runs(path):
  """Lake's all_runs.zip: runNN/{training/classCC.png, test/itemTT.png,
  class_labels.txt} -> ink images [runs, 20, 105*105] and answers [runs, 20]."""
  from PIL import Image

  def image(z, name):
    # 1-bit PNG, True = white background; ink as 1.
    return 1.0 - np.asarray(Image.open(io.BytesIO(z.read(name))), np.float32).ravel()

  train, test, answers = [], [], []
  with zipfile.ZipFile(path) as z:
    runs = sorted({n.split("/")[0] for n in z.namelist() if n.startswith("run")})
    for run in runs:
      train.append([image(z, f"{run}/training/class{c:02d}.png") for c in range(1, 21)])
      test.append([image(z, f"{run}/test/item{t:02d}.png") for t in range(1, 21)])
      key = {}
      for line in z.read(f"{run}/class_labels.txt").decode().split("\n"):
        if line.strip():
          item, cls = line.split()
          key[item.split("/")[-1]] = int(cls.split("class")[-1][:2]) - 1
      answers.append([key[f"item{t:02d}.png"] for t in range(1, 21)])
  return np.asarray(train), np.asarray(test), np.asarray(answers)


def test_omniglot_raw_pixel_baseline_on_the_official_runs(shared_data):
  train, test, answers = _read_all_runs(shared_data / "omniglot" / "all_runs.zip")
  assert train.shape == (20, 20, 105 * 105) and answers.shape == (20, 20)
  assert sorted(answers[0].tolist()) == list(range(20))  # a permutation per run
  # 1-NN on raw pixels, cosine similarity of the ink images: 87 of 400 right, 21.75%
  # accuracy (78.25% error), the published raw-pixel 1-NN baseline (21.7% in Koch et
  # al. 2015, Table 2, after Lake et al.). Euclidean pixel distance gets 19.0%.
  got = E.omniglot_one_shot(train, test, answers, distance="cosine")
  assert 0.20 <= got["accuracy"] <= 0.22
  assert got["error"] == pytest.approx(np.mean(got["run_errors"]))


# Issue 15: evaluation refuses non-finite embeddings (saying how many rows), counts
# that are not positive ints, and float labels where labels are classes.
def test_non_finite_embeddings_are_refused_saying_how_many_rows():
  x = np.random.default_rng(0).normal(size=(6, 3))
  y = np.array([0, 0, 1, 1, 2, 2])
  bad = x.copy()
  bad[1, 0], bad[4, 2] = np.nan, np.inf
  with pytest.raises(ValueError, match="embeddings has 2 of 6 rows holding NaN or inf"):
    E.retrieval_metrics(bad, y)
  with pytest.raises(ValueError, match="ref_embeddings has 2 of 6 rows"):
    E.retrieval_metrics(x, y, ref_embeddings=bad, ref_labels=y)
  with pytest.raises(ValueError, match="queries has 2 of 6 rows"):
    E.knn(bad, k=1)
  with pytest.raises(ValueError, match="embeddings has 2 of 6 rows"):
    E.clustering_metrics(bad, y)
  with pytest.raises(ValueError, match="support has 2 of 6 rows"):
    E.few_shot_predict(bad, y, x)
  with pytest.raises(ValueError, match="queries has 2 of 6 rows"):
    E.few_shot_accuracy(x, y, bad, y)
  train = np.eye(3)[None]
  test = train[:, ::-1].copy()
  test[0, 1] = np.nan
  with pytest.raises(ValueError, match="test_embeddings has 1 of 3 rows"):
    E.omniglot_one_shot(train, test, np.array([[2, 1, 0]]))


def test_counts_must_be_positive_ints_and_class_labels_integers():
  x = np.random.default_rng(0).normal(size=(6, 3))
  y = np.array([0, 0, 1, 1, 2, 2])
  for bad in (2.5, True, 0):
    with pytest.raises((TypeError, ValueError), match="k must be"):
      E.knn(x, k=bad)
    with pytest.raises((TypeError, ValueError), match="query_block must be"):
      E.retrieval_metrics(x, y, query_block=bad)
    with pytest.raises((TypeError, ValueError), match="ref_block must be"):
      E.retrieval_metrics(x, y, ref_block=bad)
  assert E.knn(x, k=np.int64(2)).indices.shape == (6, 2)
  with pytest.raises(TypeError, match="support_labels must be integers"):
    E.few_shot_predict(x, y.astype(float), x)
