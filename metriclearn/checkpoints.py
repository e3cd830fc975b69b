"""Orbax checkpoints that are verified: a checksum of every array at save, checked
at restore, a damaged checkpoint named and skipped, only finite states saved.

A checkpoint is a step folder holding two Orbax items: ``state`` (the arrays of a
:class:`metriclearn.training.TrainState`) and ``checksums`` (a SHA-256 of every
array's bytes, with its shape and dtype, taken at save). Orbax checks its own metadata
(the OCDBT manifest, a zarr3 shard index's CRC32C) but not the bytes of the arrays, so
a damaged data file would restore silently: the checksums are what restore verifies.
:func:`metriclearn.training.fit` saves and restores through these functions.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, cast

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

__all__ = [
  "CheckpointError",
  "CheckpointWarning",
  "NonFiniteLossError",
  "checkpoint_manager",
  "largest_parameter",
  "latest_step",
  "non_finite_paths",
  "restore_checkpoint",
  "save_checkpoint",
]

# metriclearn.training.TrainState (not imported: training imports this module)
TrainState = Any


class NonFiniteLossError(FloatingPointError):
  """The loss, the gradient, the parameters or the optimizer state became NaN or
  infinite; names the step, the last good checkpoint and how to resume from it.

  Attributes:
    step: the step whose update was refused (the state count it would have reached).
    metrics: that step's metrics (``loss``, ``grad_norm``).
    last_checkpoint: the step of the last good checkpoint (verified at save: finite
      parameters and optimizer state), or None.
    directory: the checkpoint directory, or None.
    bad_arrays: the paths of the non-finite arrays (when the state, not a metric,
      became non-finite).
    largest: the largest parameter magnitude of that checkpoint, when known.
  """

  def __init__(
    self,
    step: int,
    metrics: Mapping[str, float],
    last_checkpoint: int | None,
    *,
    directory: str | os.PathLike | None = None,
    bad_arrays: Sequence[str] = (),
    largest: float | None = None,
  ):
    self.step, self.metrics, self.last_checkpoint = step, metrics, last_checkpoint
    self.directory, self.bad_arrays = directory, list(bad_arrays)
    bad = [f"{k} became {v}" for k, v in metrics.items() if not math.isfinite(v)]
    if self.bad_arrays:
      shown = ", ".join(self.bad_arrays[:3]) + (", ..." if len(bad_arrays) > 3 else "")
      bad.append(f"state became non-finite ({shown})")
    if last_checkpoint is None:
      kept = "no checkpoint had been saved"
    else:
      where = f" in {directory}" if directory is not None else ""
      size = (
        f" (its largest parameter: {largest:.3g} in magnitude; if that is huge, the "
        "damage was done before it: go back further)"
        if largest is not None
        else ""
      )
      kept = (
        f"the last good checkpoint (step {last_checkpoint}) is kept{where}, with "
        f"finite parameters and optimizer state{size}. Resume from it: run fit "
        "again (it restores the latest checkpoint) with a smaller learning rate in "
        "a new optimizer (the optimizer's hyperparameters are not saved, so a new one "
        "takes effect; its state is restored), or from an earlier checkpoint with "
        "fit(..., resume_step=N)"
      )
    super().__init__(
      f"training stopped: the {' and the '.join(bad)} at step {step}; {kept}. Lower "
      "the learning rate, clip gradients, or check the data of that step."
    )


_STATE, _CHECKSUMS = "state", "checksums"
# What must be finite for a checkpoint to be saved (and so called good).
_MUST_BE_FINITE = ("params", "opt_state", "loss_params", "batch_stats")


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used: names its folder and what is wrong."""


class CheckpointWarning(UserWarning):
  """A damaged checkpoint was skipped and an earlier, verified one restored."""


def _leaves(tree) -> dict[str, np.ndarray]:
  """{'params/Dense_0/kernel': array, ...} of a state dict."""
  return {
    "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v)
    for path, v in jax.tree_util.tree_leaves_with_path(tree)
  }


def _digest(x: np.ndarray) -> dict[str, Any]:
  return {
    "sha256": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
    "shape": list(x.shape),
    "dtype": str(x.dtype),
  }


def non_finite_paths(state_dict: Mapping[str, Any]) -> list[str]:
  """The paths of the parameter, optimizer-state, loss-parameter and batch-statistic
  arrays of a state dict that hold a NaN or an inf."""
  return [
    f"{name}/{path}" if path else name
    for name in _MUST_BE_FINITE
    for path, x in _leaves(state_dict.get(name, {})).items()
    if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x))
  ]


def checkpoint_manager(
  directory: str | os.PathLike,
  *,
  save_every: int = 1000,
  keep: int | None = 3,
  async_save: bool = True,
) -> ocp.CheckpointManager:
  """An Orbax manager that saves every ``save_every`` steps and keeps the last ``keep``.

  A checkpoint appears only once completely written, so a process killed while
  saving leaves the previous checkpoints intact.
  """
  options = ocp.CheckpointManagerOptions(
    save_interval_steps=save_every,
    max_to_keep=keep,
    create=True,
    enable_async_checkpointing=async_save,
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save_checkpoint(
  manager: ocp.CheckpointManager, state: TrainState, *, force: bool = False
) -> bool:
  """Saves a single-device (or mesh-replicated) state at its step, with a checksum of
  every array, if the manager's interval says so (or ``force``); returns whether it
  saved.

  Raises:
    NonFiniteLossError: a parameter or the optimizer state is NaN/inf (nothing is
      saved: every checkpoint on disk is finite).
  """
  step = int(state.step)
  if not (force or manager.should_save(step)):
    return False
  host = jax.tree.map(np.array, serialization.to_state_dict(state))  # copies
  bad = non_finite_paths(host)
  if bad:
    raise NonFiniteLossError(
      step, {}, latest_step(manager), directory=manager.directory, bad_arrays=bad
    )
  sums = {path: _digest(x) for path, x in _leaves(host).items()}
  params = _leaves({k: host.get(k, {}) for k in ("params", "loss_params")}).values()
  largest = max((float(np.max(np.abs(x))) for x in params if x.size), default=0.0)
  record = {"step": step, "largest_parameter": largest, "arrays": sums}
  args = ocp.args.Composite(
    **{_STATE: ocp.args.StandardSave(host), _CHECKSUMS: ocp.args.JsonSave(record)}
  )
  return manager.save(step, args=args, force=force)


def latest_step(manager: ocp.CheckpointManager) -> int | None:
  manager.wait_until_finished()
  return manager.latest_step()


def largest_parameter(manager, step: int | None) -> float | None:
  """The largest parameter magnitude recorded at the save of ``step``, if readable."""
  if step is None:
    return None
  try:
    sums = manager.restore(
      step, args=ocp.args.Composite(**{_CHECKSUMS: ocp.args.JsonRestore()})
    )[_CHECKSUMS]
    return float(sums["largest_parameter"])
  except Exception:  # noqa: BLE001 - only a hint in an error message
    return None


def _first_line(error: BaseException) -> str:
  """The innermost cause of an Orbax / TensorStore error, on one line."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = cast(BaseException, error.__cause__ or error.__context__)  # one is set
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _restore_verified(manager, template: TrainState, step: int) -> TrainState:
  """The verified state of one step; CheckpointError if it is damaged, ValueError if
  it belongs to another model (shapes differ from ``template``'s)."""
  folder = os.path.join(str(manager.directory), str(step))
  if not os.path.isdir(folder) or not os.listdir(folder):
    raise CheckpointError(f"checkpoint {folder}: the folder is empty.")
  target = jax.tree.map(np.asarray, serialization.to_state_dict(template))
  try:
    sums = manager.restore(
      step, args=ocp.args.Composite(**{_CHECKSUMS: ocp.args.JsonRestore()})
    )[_CHECKSUMS]
  except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is damaged
    raise CheckpointError(
      f"checkpoint {folder}: its checksums cannot be read ({_first_line(e)}); it was "
      "written without them or is damaged."
    ) from e
  saved = sums.get("arrays", {}) if isinstance(sums, dict) else {}
  want = _leaves(target)
  wrong = [
    f"{path}: saved {saved[path]['shape']}, expected {list(x.shape)}"
    for path, x in want.items()
    if path in saved and saved[path]["shape"] != list(x.shape)
  ]
  missing = sorted(set(want) ^ set(saved))
  if wrong or missing:
    detail = "; ".join(wrong + [f"{p}: in one of them only" for p in missing[:5]])
    raise ValueError(
      f"checkpoint {folder} does not match this model and optimizer ({detail}); it "
      "was written by another configuration: use another checkpoint directory."
    )
  try:
    restored = manager.restore(
      step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target)})
    )[_STATE]
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(
      f"checkpoint {folder}: Orbax cannot read its arrays ({_first_line(e)})."
    ) from e
  changed = [
    path for path, x in _leaves(restored).items() if _digest(x) != saved.get(path)
  ]
  if changed:
    raise CheckpointError(
      f"checkpoint {folder}: {len(changed)} array(s) differ from their checksum at "
      f"save ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})."
    )
  return serialization.from_state_dict(template, restored)


def restore_checkpoint(
  manager: ocp.CheckpointManager,
  template: TrainState,
  step: int | None = None,
  *,
  set_aside: bool = False,
) -> TrainState:
  """Restores and verifies the checkpoint at ``step`` (default: the latest verified
  one) into ``template``'s structure (from ``create_train_state`` with the same
  configuration).

  Every array is checked against its checksum at save. Without ``step``, a damaged
  checkpoint (empty, truncated or changed files, no checksums) is named in a
  :class:`CheckpointWarning` and the previous one tried; with ``set_aside`` (what
  ``fit`` does) its folder is renamed ``<step>.damaged`` so that the run can save that
  step again.

  Raises:
    FileNotFoundError: no checkpoint in the directory.
    CheckpointError: the checkpoint at ``step``, or every checkpoint, is damaged
      (names the folders and what is wrong).
    ValueError: the shapes differ from ``template``'s (names the parameter path).
  """
  manager.wait_until_finished()
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}.")
  problems = []
  for s in steps:
    try:
      return _restore_verified(manager, template, s)
    except CheckpointError as e:
      if step is not None:
        raise
      problems.append(str(e))
      earlier = [t for t in steps if t < s]
      then = f"trying step {earlier[0]}" if earlier else "no earlier checkpoint"
      warnings.warn(f"{e} Skipped: {then}.", CheckpointWarning, stacklevel=2)
      if set_aside and jax.process_index() == 0:
        folder = os.path.join(str(manager.directory), str(s))
        os.replace(folder, f"{folder}.damaged.{time.time_ns()}")
        manager.reload()
  raise CheckpointError(
    f"no usable checkpoint in {manager.directory}: " + " ".join(problems) + " Move "
    "the folder away to start afresh."
  )
