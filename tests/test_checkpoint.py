"""Checkpoints: save every N steps and at the end, keep the last K, resume exactly in a
fresh process, and lose nothing saved when the process is killed with SIGKILL."""

import functools
import os
import pathlib
import signal
import subprocess
import sys
import time

import checkpoint_worker as worker
import numpy as np
import pytest
from flax import serialization

from metriclearn import training

WORKER = pathlib.Path(worker.__file__)


def assert_states_equal(got, want):
  got, want = serialization.to_state_dict(got), serialization.to_state_dict(want)
  paths = lambda t: [p for p, _ in training.jax.tree_util.tree_leaves_with_path(t)]
  assert paths(got) == paths(want)
  for a, b in zip(
    training.jax.tree.leaves(got), training.jax.tree.leaves(want), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def straight(num_steps, state=None):
  """The same run without checkpoints, in this process."""
  step, initial = worker.setup()
  return training.fit(
    step, state or initial, worker.batches, num_steps=num_steps, progress=False
  )


def restore(directory, step=None):
  """The state saved at ``step`` (default: the latest) and the steps saved."""
  manager = training.checkpoint_manager(directory)
  try:
    state = training.restore_checkpoint(manager, worker.setup()[1], step)
    return state, sorted(manager.all_steps())
  finally:
    manager.close()


def saved_steps(directory):
  """The steps of the completely written checkpoints. Read while a running process
  saves and prunes: a step directory can vanish between the listing and its stat
  (FileNotFoundError), so the reading is retried."""
  for attempt in range(10):
    manager = training.checkpoint_manager(directory)
    try:
      return sorted(manager.all_steps())
    except FileNotFoundError:
      if attempt == 9:
        raise
    finally:
      manager.close()


def worker_process(*args, delay: float = 0.0):
  """The worker in a fresh process; ``delay``: seconds each batch takes."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", CHECKPOINT_WORKER_DELAY=str(delay))
  return subprocess.Popen(
    [sys.executable, str(WORKER), *map(str, args)],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def test_resume_in_a_fresh_process_is_exact(tmp_path):
  # 3 steps here, saved at 2 (interval) and 3 (the end) ...
  worker.run(tmp_path, 3)
  # ... then a fresh process restores step 3 and runs to 6 (saving 4 and 6).
  proc = worker_process(tmp_path, 6)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  resumed, steps = restore(tmp_path)
  assert steps == [3, 4, 6]  # the last KEEP=3 checkpoints
  assert int(resumed.step) == 6
  s6 = straight(6)
  assert_states_equal(resumed, s6)  # params, batch_stats, opt_state, loss_params, ...
  assert int(np.sum(s6.memory.labels >= 0)) == 20  # the memory was in use (full)


def test_sigkill_between_checkpoints_loses_nothing_saved(tmp_path):
  proc = worker_process(tmp_path, 100, 5)  # saves at 2 and 4, hangs before step 6
  try:
    deadline = time.monotonic() + 300
    while not (tmp_path / "HANGING").exists():
      assert proc.poll() is None, proc.communicate()[0]
      assert time.monotonic() < deadline, "the worker never reached step 5"
      time.sleep(0.2)
    while saved_steps(tmp_path) != [2, 4]:  # the (asynchronous) save of 4 is done
      assert time.monotonic() < deadline, saved_steps(tmp_path)
      time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # step 5 was computed but never saved
  finally:
    proc.kill()
    proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  kept, steps = restore(tmp_path)
  assert steps == [2, 4]
  s4 = straight(4)
  assert_states_equal(kept, s4)
  assert_states_equal(restore(tmp_path, 2)[0], straight(2))
  # Training again resumes from step 4 and ends where an uninterrupted run ends.
  resumed = worker.run(tmp_path, 8)
  assert_states_equal(resumed, straight(8, s4))
  assert restore(tmp_path)[1] == [4, 6, 8]


def test_restore_from_an_empty_directory_raises(tmp_path):
  manager = training.checkpoint_manager(tmp_path)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    training.restore_checkpoint(manager, worker.setup()[1])
  manager.close()


def test_resume_with_a_seeded_iterator_is_exact(tmp_path):
  """An iterable of batches restarts from its beginning: the resumed run skips the
  batches the checkpoint has seen."""
  step, state = worker.setup()
  stream = lambda: map(worker.batches, range(100))  # a seeded sampler, in effect
  fit = functools.partial(training.fit, step, state, progress=False)
  fit(stream(), num_steps=3, checkpoint_dir=tmp_path)
  resumed = fit(stream(), num_steps=5, checkpoint_dir=tmp_path)
  assert_states_equal(resumed, straight(5))
