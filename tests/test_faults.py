"""Faults a long run meets, each with its expected outcome (issue 15): a process killed
while saving, a damaged checkpoint (noise in the largest file, a truncated or empty
file, an empty step folder), a changed configuration, a NaN state, a SIGTERM; and the
digits run whose latest checkpoint is corrupted, which must fall back and end exactly
where an uninterrupted run ends."""

import json
import os
import pathlib
import shutil
import signal
import sys
import time

import checkpoint_worker as worker
import jax
import numpy as np
import optax
import pytest
from test_checkpoint import (
  assert_states_equal,
  restore,
  saved_steps,
  straight,
  worker_process,
)

from metriclearn import models, training

# A damaged file makes TensorStore end Orbax's event loop mid-read; the error that
# matters is raised (and named) by restore_checkpoint, the loop's echo is noise.
pytestmark = pytest.mark.filterwarnings(
  "ignore::pytest.PytestUnraisableExceptionWarning"
)

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def largest_file(folder: pathlib.Path) -> pathlib.Path:
  """The largest array data file (of the merged OCDBT store: the one restore reads;
  the per-process copies in ``ocdbt.process_*/d`` are not read)."""
  files = [p for p in folder.glob("state/d/*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def noise(path: pathlib.Path, size: int = 4096) -> None:
  """Overwrites ``size`` bytes in the middle of ``path`` with random bytes."""
  data = bytearray(path.read_bytes())
  start = max(0, len(data) // 2 - size // 2)
  junk = np.random.default_rng(0).bytes(min(size, len(data)))
  data[start : start + len(junk)] = junk
  path.write_bytes(bytes(data))


def truncate(path: pathlib.Path, size: int | None = None) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2 if size is None else size])


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
  """A run of 4 steps with checkpoints at 2 and 4, copied for each test."""
  folder = tmp_path_factory.mktemp("four")
  worker.run(folder, 4)
  return folder


@pytest.fixture
def run_dir(four_steps, tmp_path):
  shutil.copytree(four_steps, tmp_path / "ckpt")
  return tmp_path / "ckpt"


@pytest.mark.parametrize(
  "damage",
  [
    lambda p: noise(largest_file(p)),
    lambda p: noise(largest_file(p), 64),  # values changed, the format intact
    lambda p: truncate(largest_file(p)),
    lambda p: truncate(largest_file(p), 0),
    lambda p: noise(p / "state" / "_METADATA"),
    lambda p: [f.write_bytes(b"") for f in p.rglob("*") if f.is_file()],
  ],
  ids=[
    "noise_4KiB",
    "noise_64B",
    "truncated",
    "zero_length",
    "metadata",
    "every_file_empty",
  ],
)
def test_a_damaged_checkpoint_is_named_and_the_previous_one_used(run_dir, damage):
  damage(run_dir / "4")
  with pytest.warns(training.CheckpointWarning, match=f"{run_dir}/4") as record:
    kept, steps = restore(run_dir)
  assert "trying step 2" in str(record[0].message)
  assert_states_equal(kept, straight(2))
  # The run resumes from 2 (the damaged folder set aside) and ends where an
  # uninterrupted run ends.
  with pytest.warns(training.CheckpointWarning):
    resumed = worker.run(run_dir, 6)
  assert_states_equal(resumed, straight(6))
  assert saved_steps(run_dir) == [2, 4, 6]
  assert [p.name for p in run_dir.glob("4.damaged*")]


def test_an_empty_step_folder_is_skipped(run_dir):
  (run_dir / "6").mkdir()
  with pytest.warns(
    training.CheckpointWarning, match=f"{run_dir}/6: the folder is empty"
  ):
    kept, _ = restore(run_dir)
  assert_states_equal(kept, straight(4))


def test_with_every_checkpoint_damaged_the_error_names_the_folders(run_dir):
  for s in ("2", "4"):
    noise(largest_file(run_dir / s), 64)
  with pytest.warns(training.CheckpointWarning):
    with pytest.raises(training.CheckpointError, match="no usable checkpoint") as e:
      restore(run_dir)
  assert f"{run_dir}/4" in str(e.value) and f"{run_dir}/2" in str(e.value)
  assert "cannot read its arrays" in str(e.value) or "differ from their" in str(e.value)
  # Asking for one step by name: an error, no fallback.
  with pytest.raises(training.CheckpointError, match=f"{run_dir}/2"):
    restore(run_dir, 2)


def test_a_checkpoint_of_another_model_names_the_folder_and_the_parameter(run_dir):
  model = models.Encoder(
    models.MLPEncoder(hidden=(16,), batch_norm=True),
    models.EmbeddingHead(5, normalize=False),  # 5, not 4
  )
  other = training.create_train_state(
    jax.random.PRNGKey(0),
    model,
    optax.adam(1e-2),
    worker.batches(0)["image"],
    loss_params={"log_temperature": np.log(0.5)},
    memory_size=20,
  )
  manager = training.checkpoint_manager(run_dir)
  with pytest.raises(ValueError, match=f"{run_dir}/4 does not match") as e:
    training.restore_checkpoint(manager, other)
  manager.close()
  assert (
    "params/EmbeddingHead_0/Dense_0/kernel: saved [16, 4], expected [16, 5]"
    in str(e.value)
    or "saved [16, 4], expected [16, 5]" in str(e.value)
  )


def test_a_non_finite_state_is_never_saved_and_the_error_says_how_to_resume(run_dir):
  state, _ = restore(run_dir)
  bad = state.replace(
    step=state.step + 1, opt_state=jax.tree.map(lambda x: x * np.inf, state.opt_state)
  )
  manager = training.checkpoint_manager(run_dir)
  try:
    with pytest.raises(
      training.NonFiniteLossError, match="state became non-finite"
    ) as e:
      training.save_checkpoint(manager, bad, force=True)
    assert e.value.last_checkpoint == 4 and "opt_state/" in str(e.value)
    assert f"(step 4) is kept in {run_dir}" in str(e.value)
    assert "resume_step=N" in str(e.value)
    assert sorted(manager.all_steps()) == [2, 4]
  finally:
    manager.close()
  # resume_step: from an earlier checkpoint, the later ones deleted.
  step, initial = worker.setup()
  resumed = training.fit(
    step,
    initial,
    worker.batches,
    num_steps=3,
    checkpoint_dir=run_dir,
    save_every=2,
    resume_step=2,
    progress=False,
  )
  assert_states_equal(resumed, straight(3))
  assert saved_steps(run_dir) == [2, 3]


def wait_for(predicate, proc, what, timeout=300):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert proc.poll() is None, proc.communicate()[0]
    assert time.monotonic() < deadline, what
    time.sleep(0.05)


def test_sigkill_during_a_save_leaves_a_verified_checkpoint(tmp_path):
  # Saves every 2 steps (asynchronously) while steps run: killed as soon as a
  # checkpoint folder is being written after the first two are complete.
  proc = worker_process(tmp_path, 1000, delay=0.02)
  try:
    wait_for(lambda: len(saved_steps(tmp_path)) >= 2, proc, "two checkpoints")
    wait_for(
      lambda: any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir()),
      proc,
      "a save in progress",
    )
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.kill()
    proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  kept, steps = restore(tmp_path)  # the last complete one, verified
  assert int(kept.step) == steps[-1]
  assert_states_equal(kept, straight(steps[-1]))
  resumed = worker.run(tmp_path, steps[-1] + 2)
  assert_states_equal(resumed, straight(steps[-1] + 2))


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes_from_it(tmp_path):
  proc = worker_process(tmp_path, 1000, delay=0.1)
  try:
    wait_for(lambda: saved_steps(tmp_path) == [2], proc, "the first checkpoint")
    time.sleep(0.15)  # between two checkpoints, most likely
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 143, out
  kept, steps = restore(tmp_path)
  assert steps[-1] >= 2 and int(kept.step) == steps[-1]
  assert_states_equal(kept, straight(steps[-1]))
  resumed = worker.run(tmp_path, steps[-1] + 1)
  assert_states_equal(resumed, straight(steps[-1] + 1))


# ------------------------------------------------------------ experiments/train.py

sys.path.insert(0, str(EXPERIMENTS))
import train  # noqa: E402

DIGITS = str(EXPERIMENTS / "configs" / "digits.py")
SMALL = [  # a small digits run; episodes and max_test only trim the evaluation
  *("--set", "episodes=5", "--set", "max_test=150", "--set", "hidden=(32,)"),
  *("--set", "batch_size=20", "--set", "samples_per_class=4", "--no-progress"),
]


def digits(workdir, *extra):
  return train.main(["--config", DIGITS, "--workdir", str(workdir), *SMALL, *extra])


def test_a_changed_configuration_is_refused_naming_the_keys(tmp_path):
  digits(tmp_path, "--set", "steps=4", "--set", "save_every=2", "--set", "eval_every=4")
  assert json.loads((tmp_path / "config.json").read_text())["save_every"] == 2
  with pytest.raises(ValueError, match="learning_rate: 0.003 there, 1e\\+30 now"):
    digits(tmp_path, "--set", "steps=6", "--set", "learning_rate=1e30")
  # A change allowed on purpose that changes a shape: the checkpoint and the
  # parameter are named.
  with pytest.raises(ValueError, match=r"checkpoints/4 does not match.*kernel: saved"):
    digits(
      tmp_path,
      "--set",
      "steps=6",
      "--set",
      "embedding_dim=8",
      "--allow-change",
      "embedding_dim",
    )


def test_every_key_is_settable_with_set(tmp_path):
  sets = ["save_every=7", "data_path='/x'", "log_every=5"]
  config = train.load_config(DIGITS, sets)
  assert (config["save_every"], config["data_path"], config["log_every"]) == (
    7,
    "/x",
    5,
  )


def test_digits_run_with_a_corrupted_latest_checkpoint_falls_back_and_ends_equal(
  tmp_path,
):
  args = ["--set", "steps=40", "--set", "save_every=20", "--set", "eval_every=40"]
  straight_run = digits(tmp_path / "a", *args)
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  noise(largest_file(tmp_path / "b" / "checkpoints" / "40"))
  with pytest.warns(training.CheckpointWarning, match="checkpoints/40") as record:
    again = digits(tmp_path / "b", *args[:-1], "eval_every=20")  # a safe change
  assert "trying step 20" in str(record[0].message)
  assert again["metrics"] == straight_run["metrics"]
  log = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")]
  steps = [r["step"] for r in log if "loss" in r]
  assert steps == [10, 20, 30, 40]  # cut back to 20, then 30 and 40 again


def test_the_nan_error_says_how_large_the_kept_checkpoint_is(tmp_path):
  # learning_rate=1e30, a checkpoint every step: step 1's parameters are finite but
  # about 1e30, and step 2 is NaN; the error names the checkpoint, its size and how to
  # go further back.
  step, state = worker.setup()
  tx = optax.adam(1e30)
  state = state.replace(tx=tx, opt_state=tx.init(state.trainable))
  with pytest.raises(training.NonFiniteLossError) as e:
    training.fit(
      step,
      state,
      worker.batches,
      num_steps=10,
      checkpoint_dir=tmp_path,
      save_every=1,
      keep=5,
      progress=False,
    )
  assert e.value.last_checkpoint == 1
  assert f"(step 1) is kept in {tmp_path}" in str(e.value)
  assert "largest parameter: 1e+30" in str(e.value) and "resume_step=N" in str(e.value)
