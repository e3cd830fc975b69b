"""The experiments run as documented: the main job, its files, and the notebook."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import ensemble  # noqa: E402
import registry  # noqa: E402
import search  # noqa: E402
import train  # noqa: E402

FIGURES = {
  "training_curves.png",
  "embedding_map.png",
  "distance_histograms.png",
  "roc.png",
  "retrieval_grid.png",
}


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
  """The main job (the default configuration) with --smoke, the shared data hidden:
  the same code path as `python experiments/train.py`, from the bundled pack only."""
  workdir = tmp_path_factory.mktemp("main_job")
  empty = tmp_path_factory.mktemp("no_shared_data")
  with pytest.MonkeyPatch.context() as mp:
    mp.delenv("METRICLEARN_DATA", raising=False)
    mp.setattr(train, "data_root", lambda config: empty)  # nothing there
    args = ["--smoke", "--workdir", str(workdir), "--no-progress"]
    return workdir, train.main(args)


def test_main_job_trains_on_the_pack_and_scores_the_official_runs(main_job, capsys):
  workdir, result = main_job
  saved = json.loads((workdir / "metrics.json").read_text())
  assert saved["config"]["dataset"] == "omniglot" and saved["config"]["smoke"]
  for key in ("precision_at_1", "r_precision", "map_at_r", "nmi", "roc_auc", "eer"):
    assert 0.0 <= saved["metrics"][key] <= 1.0, key
  # 400 test drawings of the official runs: accuracy in steps of 1/400
  official = saved["metrics"]["official_20way_one_shot"]
  assert 0.0 < official <= 1.0 and abs(official * 400 - round(official * 400)) < 1e-6
  assert set(saved["baselines"]) == {"raw pixels", "untrained"}
  assert "official_20way_one_shot" in saved["baselines"]["raw pixels"]
  assert saved["metrics"] == result["metrics"] and saved["wall_time_s"] > 0
  assert {p.name for p in (workdir / "figures").glob("*.png")} == FIGURES
  assert (workdir / "checkpoints").is_dir()
  assert {p.name for p in (workdir / "encoder").iterdir()} == {
    "manifest.json",
    "variables.npz",
  }
  log = [json.loads(line) for line in (workdir / "log.jsonl").open()]
  assert log[-1]["step"] == train.SMOKE["steps"]
  assert any("eval/official_20way_one_shot" in r for r in log)


def test_exported_encoder_searches_in_a_new_process(main_job, tmp_path):
  """The journey's end in a fresh interpreter that never saw the config: load the
  encoder, embed 500 held-out drawings, index them, search them."""
  workdir, _ = main_job
  code = f"""
import numpy as np
from metriclearn import data, inference
encoder = inference.load_encoder({str(workdir / "encoder")!r})
ds = data.load("omniglot", "evaluation", image_size=28)
emb = encoder.embed(ds.images[:500])
index = inference.Index(emb, labels=ds.labels[:500])
d, ids = index.search(emb, k=5)
assert np.all(ids[:, 0] == np.arange(500)) and np.all(d[:, 0] == 0), "self at rank 1"
brute = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
order = np.argsort(brute, axis=1, kind="stable")[:, :5]
assert np.array_equal(ids, order), "brute force"
np.testing.assert_allclose(d, np.take_along_axis(brute, order, 1), atol=1e-5)
index.save({str(tmp_path / "index")!r})
again = inference.Index.load({str(tmp_path / "index")!r})
d2, ids2 = again.search(emb, k=5)
assert np.array_equal(ids2, ids) and np.array_equal(d2, d), "save/load"
print("ok", emb.shape)
"""
  done = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "ok (500, 128)" in done.stdout


def test_search_script_draws_a_grid(main_job, tmp_path):
  workdir, _ = main_job
  out = tmp_path / "grid.png"
  p1, _ = search.search_grid(
    workdir / "encoder", "omniglot", "evaluation", queries=4, k=3, out=out
  )
  assert p1 in (0.0, 0.25, 0.5, 0.75, 1.0) and out.stat().st_size > 1000


def test_ensemble_scores_exported_encoders_as_their_runs_did(
  main_job, tmp_path, monkeypatch
):
  # The loaded encoder, scored by ensemble.py, gives what train.py's own evaluation
  # wrote; two copies of one encoder are that encoder (their concatenation / sqrt(2)
  # has its distances); a member of other data is refused by key.
  workdir, result = main_job
  monkeypatch.delenv("METRICLEARN_DATA", raising=False)
  monkeypatch.setattr(train, "data_root", lambda config: tmp_path / "nothing")
  out = ensemble.main([str(workdir), str(workdir), "--out", str(tmp_path / "e.json")])
  rows = {(r["encoder"], r["tta"]): r for r in out["rows"]}
  tta = json.loads((workdir / "config.json").read_text())["tta"]  # as it was scored
  alone, pair = rows[(workdir.name, tta)], rows[("ensemble of 2", tta)]
  want = result["metrics"]
  assert alone["official"] == pytest.approx(want["official_20way_one_shot"], abs=1e-9)
  for key in ("precision_at_1", "map_at_r"):
    assert alone[key] == pytest.approx(want[key], abs=1e-6), key
    # the pair's distances equal the member's up to float32 rounding, which can
    # swap two nearly tied neighbours: one swap moves MAP@R by ~3e-5 here
    assert pair[key] == pytest.approx(alone[key], abs=1e-4), key
  # (the same near ties: at most one of the 400 official trials may flip)
  assert pair["official"] == pytest.approx(alone["official"], abs=1 / 400 + 1e-9)
  assert {tta for _, tta in rows} == {False, True}
  saved = json.loads((tmp_path / "e.json").read_text())
  assert saved["command"].startswith("python experiments/ensemble.py")
  other = tmp_path / "other"
  other.mkdir()
  config = json.loads((workdir / "config.json").read_text())
  (other / "config.json").write_text(json.dumps({**config, "image_size": 56}))
  (other / "encoder").symlink_to(workdir / "encoder")
  with pytest.raises(ValueError, match="differ in 'image_size'"):
    ensemble.load_members([workdir, other])


def test_ensemble_distance_is_the_mean_of_the_members_squared_distances():
  # member a: (1, 0) and (0, 1), squared distance 2; member b: (3, 0) and (6, 0),
  # both (1, 0) once normalised, distance 0; the ensemble: (2 + 0) / 2 = 1, and
  # each joined embedding has norm sqrt((1 + 1) / 2) = 1
  a = {"test": np.array([[1.0, 0.0], [0.0, 1.0]]), "run_train": np.eye(2)}
  b = {"test": np.array([[3.0, 0.0], [6.0, 0.0]]), "run_train": np.eye(2)}
  joined = ensemble.concatenated([a, b])
  assert set(joined) == {"test", "run_train"} and joined["test"].shape == (2, 4)
  assert np.sum((joined["test"][0] - joined["test"][1]) ** 2) == pytest.approx(1.0)
  np.testing.assert_allclose(np.linalg.norm(joined["test"], axis=1), 1.0)
  rows = [{"encoder": "s0", "tta": True, "precision_at_1": 0.5, "official": None}]
  assert ensemble.rows_table(rows).splitlines()[-1] == "| s0 | yes | 0.5000 |"
  assert ensemble.is_ensemble({"encoder": "ensemble of 3"})
  assert not ensemble.is_ensemble({"encoder": "run_s0"})


@pytest.mark.parametrize("split", ["small1", "small2"])
def test_small_set_configurations_are_the_background_one_on_their_split(split):
  # the final small-set configurations differ from the background one in the
  # training split alone
  configs = ROOT / "experiments" / "configs"
  small = train.load_config(configs / f"omniglot_oneshot_{split}.py")
  background = train.load_config(configs / "omniglot_oneshot.py")
  assert small["train_split"] == split and background["train_split"] == "background"
  assert {**small, "train_split": "background"} == background


def test_long_configuration_is_the_background_one_twice_as_long():
  configs = ROOT / "experiments" / "configs"
  long = train.load_config(configs / "omniglot_oneshot_long.py")
  background = train.load_config(configs / "omniglot_oneshot.py")
  assert (long["steps"], background["steps"]) == (6000, 3000)
  assert {**long, "steps": 3000} == background


def test_digits_configuration_runs_with_smoke(tmp_path):
  config = str(ROOT / "experiments" / "configs" / "digits.py")
  result = train.main(
    ["--config", config, "--smoke", "--workdir", str(tmp_path), "--no-progress"]
  )
  assert result["config"]["dataset"] == "digits"
  assert "official_20way_one_shot" not in result["metrics"]
  assert (tmp_path / "encoder" / "manifest.json").exists()


# One loss of each family through `train.py --set loss=<name>` (digits, --smoke), with
# its options, a miner, the other optimizers and the two-view sampler.
FAMILY_RUNS = {
  "pair": ["loss=contrastive", "loss_kwargs.margin=0.5"],
  "triplet": ["loss=batch_hard_triplet", "miner=batch_easy_hard"],
  "pair_triplet": ["loss=angular", "loss_kwargs.alpha=40.0", "optimizer=sgd"],
  "pair_weighting": ["loss=multi_similarity", "schedule=constant"],
  "softmax": ["loss=decoupled_contrastive", "loss_kwargs.temperature=0.05"],
  "ranking": ["loss=smooth_ap", "optimizer=lamb"],
  "classification": ["loss=arcface", "loss_kwargs.scale=16.0"],
  "proxy": ["loss=proxy_anchor"],
  "self_supervised": ["loss=vicreg", "augment=koch"],
}


@pytest.mark.parametrize("family", sorted(FAMILY_RUNS))
def test_every_family_runs_from_the_command_line(family, tmp_path):
  config = str(ROOT / "experiments" / "configs" / "digits.py")
  args = ["--config", config, "--smoke", "--workdir", str(tmp_path), "--no-progress"]
  for setting in FAMILY_RUNS[family]:
    args += ["--set", setting]
  result = train.main(args)
  loss = FAMILY_RUNS[family][0].removeprefix("loss=")
  assert result["config"]["loss"] == loss
  for setting in FAMILY_RUNS[family][1:]:
    key, value = setting.split("=")
    top, _, sub = key.partition(".")
    got = result["config"][top][sub] if sub else result["config"][top]
    assert str(got) == value, (key, got)
  assert np.isfinite(result["metrics"]["map_at_r"])
  log = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
  assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)


def test_validation_holds_out_whole_alphabets_of_the_training_split():
  config = {"dataset": "omniglot", "holdout": "validation", "validation_groups": 5}
  train_part, held, runs = train.load_data(config)
  assert runs is None  # the official runs stay unseen
  assert len(np.unique(held.groups)) == 5
  assert not set(np.unique(held.groups)) & set(np.unique(train_part.groups))
  assert len(train_part) + len(held) == 19280 and held.labels.max() < 964
  again, _, _ = train.load_data({**config, "seed": 7})  # the same split for any seed
  assert np.array_equal(again.labels, train_part.labels)


def test_bad_override_names_the_key(tmp_path):
  with pytest.raises(ValueError, match="--set 'stepz=3'"):
    train.main(["--workdir", str(tmp_path), "--set", "stepz=3"])
  with pytest.raises(ValueError, match="loss must be one of"):
    train.main(["--workdir", str(tmp_path), "--set", "loss=nope", "--no-progress"])


def test_quickstart_notebook_runs_end_to_end():
  nb = nbformat.read(ROOT / "experiments" / "quickstart.ipynb", as_version=4)
  NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
  ).execute()
  text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
  assert "official 20-way one-shot" in text and "map_at_r" in text
  assert "P@1 of the 8 queries" in text


import report  # noqa: E402
import sweep  # noqa: E402


def test_one_shot_episodes_within_a_group():
  # Group 0: classes 0, 1 far apart. Group 1: classes 2, 3 with all four images at one
  # point, so a tie that argmin breaks to the first support: half the queries wrong.
  # Class 4 (group 2) is alone in its group and class 5 has one image: neither can be
  # in a 2-way within-group episode. Within a group: episodes of group 0 score 1, of
  # group 1 score 1/2, so the mean tends to 3/4. Across groups, only the episode
  # {2, 3} (1 of the 10 pairs of classes 0-4) scores 1/2: mean tends to 0.95.
  emb = np.array(
    [[0, 0], [0, 0], [9, 0], [9, 0], [5, 5], [5, 5], [5, 5], [5, 5]]
    + [[0, 9], [0, 9], [3, 3]],
    np.float32,
  )
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5])
  groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3])
  within, ways = train._one_shot_episodes(
    emb, labels, ways=2, episodes=2000, seed=0, groups=groups
  )
  across, _ = train._one_shot_episodes(emb, labels, ways=2, episodes=2000, seed=0)
  assert ways == 2
  assert abs(within - 0.75) < 0.02 and abs(across - 0.95) < 0.02
  with pytest.raises(ValueError, match="no group of the held-out set has 3 classes"):
    train._one_shot_episodes(emb, labels, ways=3, episodes=1, seed=0, groups=groups)


def _fake_run(folder, name, config, metrics):
  run = folder / name
  (run / "figures").mkdir(parents=True)
  for png in ("training_curves", "embedding_map", "distance_histograms", "roc"):
    (run / "figures" / f"{png}.png").write_bytes(b"png")
  machine = {"devices": "cpu:0", "backend": "cpu", "cpu": "x", "cores": 2, "jax": "0"}
  result = {"metrics": metrics, "config": config, "machine": machine}
  result["wall_time_s"] = 10.0
  (run / "metrics.json").write_text(json.dumps(result))


def test_sweep_summary_is_mean_and_sample_std(tmp_path):
  assert sweep.grid_points(["a=1,2", "b=x"]) == [
    {"a": "1", "b": "x"},
    {"a": "2", "b": "x"},
  ]
  for seed, p1 in [(0, 0.4), (1, 0.6), (2, 0.8)]:
    config = {"seed": seed}
    _fake_run(tmp_path, f"loss=a_s{seed}", config, {"precision_at_1": p1})
  table, rows = sweep.summarize(tmp_path, [{"loss": "a"}], [0, 1, 2])
  # mean 0.6; sample std sqrt((0.2^2 + 0 + 0.2^2) / 2) = 0.2
  assert "| a | 3 | 0.6000 ± 0.2000 | 10 |" in table
  assert rows[0]["seeds"] == [0, 1, 2]


def test_sweep_runs_resumes_and_tabulates(tmp_path, capsys):
  args = ["--config", str(ROOT / "experiments" / "configs" / "digits.py")]
  args += ["--seeds", "0", "--grid", "loss=supcon", "--out", str(tmp_path)]
  args += ["--set", "steps=4", "--set", "eval_every=4", "--set", "episodes=5"]
  sweep.main(args)
  saved = json.loads((tmp_path / "loss=supcon_s0" / "metrics.json").read_text())
  assert saved["config"]["steps"] == 4 and saved["config"]["loss"] == "supcon"
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary[0]["mean"]["map_at_r"] == saved["metrics"]["map_at_r"]
  sweep.main(args)  # the finished run is not run again
  assert "loss=supcon_s0: done before" in capsys.readouterr().out


def test_report_tables_from_runs(tmp_path):
  runs = tmp_path / "runs"
  base = {"dataset": "mnist", "image_size": 28, "embedding_dim": 64, "steps": 10}
  base.update(batch_size=120, samples_per_class=24, learning_rate=1e-3, max_test=50)
  fake = [("contrastive", (0.4, 0.6)), ("log_likelihood", (0.3, 0.55))]
  for loss, values in [*fake, ("supcon", (0.7, 0.7))]:
    for seed, v in enumerate(values):
      metrics = dict.fromkeys(["map_at_r", "r_precision", "precision_at_1"], v)
      metrics["5way_one_shot"] = v
      _fake_run(runs, f"{loss}_s{seed}", {**base, "loss": loss, "seed": seed}, metrics)
  out = tmp_path / "results" / "comparison.md"
  out.parent.mkdir()
  out.write_text(f"# kept\n\n{report.BEGIN}\nold\n{report.END}\ntail\n")
  report.main(["compare", str(runs), "--out", str(out)])
  text = out.read_text()
  assert text.startswith("# kept") and text.endswith("tail\n") and "\nold\n" not in text
  # contrastive: mean 0.5, sample std sqrt(2 * 0.1^2 / 1) = 0.141; supcon best, bold
  assert "| contrastive | pair | 2 | 0.500 ± 0.141 |" in text
  assert "| supcon | batch | 2 | **0.700 ± 0.000** |" in text
  # seed for seed: differences 0.1, 0.05: mean 0.075, sd 0.05 / sqrt(2) = 0.03536,
  # t(0.975, 1) = 12.706: 0.075 -+ 12.706 * 0.03536 / sqrt(2) = [-0.2427, +0.3927]
  row = "| mnist | map_at_r | 2 | 0.5000 | 0.4250 | +0.0750 [-0.2427, +0.3927] |"
  assert f"{row} no measurable difference |" in text
  assert (out.parent / "comparison" / "map_at_r.png").stat().st_size > 1000


def test_report_puts_official_accuracy_beside_lake(tmp_path):
  runs = tmp_path / "runs"
  config = {"train_split": "background", "batch_by_group": False, "image_size": 28}
  keys = ["precision_at_1", "r_precision", "map_at_r", "20way_one_shot"]
  keys += ["20way_within_alphabet", "nmi", "roc_auc"]
  for seed, acc in enumerate([0.93, 0.95]):
    metrics = {**dict.fromkeys(keys, 0.5), "official_20way_one_shot": acc}
    _fake_run(runs, f"s{seed}", {**config, "seed": seed}, metrics)

  def row(encoder, tta, official, **extra):
    return {"encoder": encoder, "tta": tta, "official": official, **extra}

  held = dict(precision_at_1=0.5, map_at_r=0.25, **{"20way_within_alphabet": 0.75})
  test = {
    "holdout": "test",
    "config": {"image_size": 28, "train_split": "background"},
    "steps": [6000, 6000],
    "rows": [
      row("s0", False, 0.90),
      row("s1", False, 0.92),
      row("ensemble of 2", False, 0.9575),
      row("s0", True, 0.96),
      row("s1", True, 0.96),
      row("ensemble of 2", True, 0.98),
    ],
  }
  validation = {"holdout": "validation", "command": "python ens", "rows": []}
  validation["rows"] = [row("v0", True, None, **held)]
  files = []
  for name, result in [("test.json", test), ("val.json", validation)]:
    files.append(tmp_path / name)
    files[-1].write_text(json.dumps(result))
  out = tmp_path / "oneshot.md"
  args = ["--out", str(out), "--ensembles", *map(str, files)]
  report.main(["oneshot", str(runs), *args])
  text = out.read_text()
  # 93 and 95: mean 94.00, sample std sqrt(2 * 1^2) = 1.41; above Koch's 92.0;
  # 400 trials at 0.94: 1.96 sqrt(0.94 * 0.06 / 400) = 1.96 * 0.01187 = 2.3 points
  assert "**94.00 ± 1.41** | 2 seeds (93.00, 95.00); ±2.3 a score |" in text
  lines = text.splitlines()
  ours = next(i for i, x in enumerate(lines) if "94.00 ± 1.41" in x)
  assert lines[ours + 1].startswith("| background | deep siamese convnet")
  # the ensemble file's rows: members 90 and 92 -> 91.00 ± 1.41, 400 trials at 0.91:
  # 1.96 sqrt(0.91 * 0.09 / 400) = 2.8; the shifted ensemble's 98.0 (±1.96 sqrt(0.98
  # * 0.02 / 400) = 1.4) sorts between ARC's 98.5 and BPL's 96.7
  assert "**91.00 ± 1.41** | 2 seeds (90.00, 92.00); ±2.8 a score |" in text
  shifted = next(i for i, x in enumerate(lines) if "**98.00**" in x)
  assert "ensemble of 2 seeds, 6,000 steps, test-time shifts" in lines[shifted]
  assert "| one score; ±1.4 |" in lines[shifted]
  assert "ConvARC" in lines[shifted - 1] and "BPL" in lines[shifted + 1]
  assert "**96.00 ± 0.00** | 2 seeds (96.00, 96.00)" in text
  assert "| v0 | yes | 0.5000 | 0.2500 | 0.7500 |" in text
  # a file without the markers is refused and left as it was
  plain = tmp_path / "plain.md"
  plain.write_text("# hand-written\n")
  with pytest.raises(SystemExit, match="markers"):
    report.main(["oneshot", str(runs), "--out", str(plain)])
  assert plain.read_text() == "# hand-written\n"


def test_report_pairs_seeds_and_marks_the_validation_choice(tmp_path):
  base = {"dataset": "omniglot", "loss_kwargs": {}, "loss_init": {}, "steps": 10}
  base.update(image_size=28, embedding_dim=64, batch_size=128, samples_per_class=4)
  base.update(learning_rate=1e-3, max_test=50)
  more = dict.fromkeys(
    ["r_precision", "20way_within_alphabet", "official_20way_one_shot"]
  )
  paired, val = tmp_path / "paired", tmp_path / "val"
  values = {  # MAP@R, P@1 of seeds 0, 1, 2
    "contrastive": ((0.50, 0.52, 0.55), (0.70, 0.72, 0.74)),
    "log_likelihood": ((0.49, 0.49, 0.53), (0.68, 0.69, 0.70)),
    "literal_sigmoid": ((0.40, 0.41, 0.45), (0.6, 0.6, 0.6)),
  }
  for loss, (maps, p1s) in values.items():
    for seed, (m, p1) in enumerate(zip(maps, p1s, strict=True)):
      metrics = {"map_at_r": m, "precision_at_1": p1, "20way_one_shot": 0.5}
      metrics.update({k: 0.5 for k in more})
      config = {**base, "loss": loss, "seed": seed}
      _fake_run(paired, f"{loss}_s{seed}", config, metrics)
  for margin, m in [(0.5, 0.3), (1.0, 0.4)]:
    config = {
      **base,
      "loss": "contrastive",
      "seed": 0,
      "loss_kwargs": {"margin": margin},
    }
    metrics = {"map_at_r": m, "precision_at_1": m, "20way_one_shot": m}
    _fake_run(val, f"margin={margin}_s0", config, metrics)
  out = tmp_path / "comparison.md"
  args = [str(paired), "--paired", str(paired), "--validation", str(val)]
  report.main(["compare", *args, "--out", str(out)])
  text = out.read_text()
  # MAP@R differences 0.01, 0.03, 0.02: mean 0.02, sd 0.01, t(0.975, 2) = 4.3027,
  # half width 4.3027 * 0.01 / sqrt(3) = 0.02484: [-0.0048, +0.0448], contains 0
  row = "| omniglot | map_at_r | 3 | 0.5233 | 0.5033 | +0.0200 [-0.0048, +0.0448] |"
  assert f"{row} no measurable difference |" in text
  # P@1 differences 0.02, 0.03, 0.04: mean 0.03, the same half width: [+0.0052, +0.0548]
  row = (
    "| omniglot | precision_at_1 | 3 | 0.7200 | 0.6900 | +0.0300 [+0.0052, +0.0548] |"
  )
  assert f"{row} contrastive ahead |" in text
  # literal against contrastive: -0.10, -0.11, -0.10: mean -0.10333, sd 0.005774,
  # half 4.3027 * 0.005774 / sqrt(3) = 0.01434: [-0.1177, -0.0890]
  cells = "| 0.4200 ± 0.0265 | 0.6000 ± 0.0000 | 0.5000 ± 0.0000 | 0.5000 ± 0.0000 |"
  assert f"| literal_sigmoid | default | 3 {cells} -0.1033 [-0.1177, -0.0890] |" in text
  # validation: the better MAP@R (margin 1.0, 0.4) in bold, the other not
  assert "| omniglot | contrastive | **margin=1.0** | 0 | 0.4000 |" in text
  assert "| omniglot | contrastive | margin=0.5 | 0 | 0.3000 |" in text


def test_pair_variants_and_loss_init_of_the_registry():
  x1, x2 = jnp.zeros(2), jnp.array([0.3, 0.4])  # distance 0.5
  literal = registry.get("literal_sigmoid").fn
  # sigma(0.5) = 1 / (1 + e^-0.5) = 0.622459; dissimilar: 1 - 0.622459 = 0.377541
  assert abs(float(literal(x1, x2, True)) - 0.622459) < 1e-6
  assert abs(float(literal(x1, x2, False)) - 0.377541) < 1e-6
  assert abs(float(literal(x1, x1, True)) - 0.5) < 1e-6  # the floor sigma(0)
  hadsell = registry.get("contrastive_hadsell").fn
  assert abs(float(hadsell(x1, x2, False)) - 0.125) < 1e-7  # 1/2 (1 - 0.5)^2
  assert abs(float(hadsell(x1, x2, True)) - 0.125) < 1e-7  # 1/2 0.5^2
  config = {"loss": "log_likelihood", "embedding_dim": 4, "loss_init": {"scale": 10.0}}
  spec = registry.get("log_likelihood")
  params = train.loss_params(config, spec, jax.random.PRNGKey(0), 3)
  # s = 10, b = s * 0.5 (the default threshold) = 5
  assert abs(float(params["log_scale"]) - np.log(10.0)) < 1e-6
  assert float(params["bias"]) == 5.0
  with pytest.raises(ValueError, match=r"loss_init \['margin'\] not an option"):
    train.loss_params({**config, "loss_init": {"margin": 1}}, spec, None, 3)
  with pytest.raises(ValueError, match="loss_init.scale and loss_init.threshold"):
    train.loss_params({**config, "loss_init": {"scale": -1.0}}, spec, None, 3)


def test_validation_holds_out_classes_without_groups():
  config = {"dataset": "digits", "holdout": "validation"}
  train_part, held, _ = train.load_data(config)
  # digits 0-4 train the test run; max(2, 5 // 5) = 2 of them are held out here
  assert len(np.unique(held.labels)) == 2 and len(np.unique(train_part.labels)) == 3
  assert not set(np.unique(held.labels)) & set(np.unique(train_part.labels))
  with pytest.raises(ValueError, match=r"validation_classes must be in \[2, 4\]"):
    train.load_data({**config, "validation_classes": 5})
