"""The experiments run as documented: the main job, its files, and the notebook."""

import json
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import train  # noqa: E402


def test_main_job_writes_metrics_checkpoints_and_figures(tmp_path, capsys):
  # the default configuration, shortened: the same code path as `python train.py`
  result = train.main(
    [
      "--workdir",
      str(tmp_path),
      "--no-progress",
      "--set",
      "steps=40",
      "--set",
      "eval_every=20",
      "--set",
      "episodes=50",
    ]
  )
  out = capsys.readouterr().out
  assert "| map_at_r" in out and "held-out classes" in out
  saved = json.loads((tmp_path / "metrics.json").read_text())
  for key in ("precision_at_1", "r_precision", "map_at_r", "nmi", "roc_auc", "eer"):
    assert 0.0 <= saved["metrics"][key] <= 1.0, key
  assert saved["config"]["dataset"] == "digits" and saved["wall_time_s"] > 0
  assert saved["metrics"] == result["metrics"]
  names = {p.name for p in (tmp_path / "figures").glob("*.png")}
  assert names == {
    "training_curves.png",
    "embedding_map.png",
    "distance_histograms.png",
    "roc.png",
  }
  assert (tmp_path / "checkpoints").is_dir()
  log = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
  assert log[-1]["step"] == 40 and any("eval/map_at_r" in r for r in log)


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
  assert "map_at_r" in text and "trained" in text
