"""Two processes on 127.0.0.1 (jax.distributed, gloo, 4 CPU devices each) train as one
and end with the parameters of a single 8-device process: examples/multihost.py."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_two_processes_equal_one_eight_device_process():
  env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
  done = subprocess.run(
    [sys.executable, str(ROOT / "examples" / "multihost.py")],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  summary = [line for line in done.stdout.splitlines() if line.startswith("multihost")]
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  assert len(summary) == 1 and summary[0].endswith(": equal"), summary
