"""The machine line every benchmark prints (CPU, cores, Python, JAX, backend, load),
the command line its results file names, and the writing of its generated part."""

from __future__ import annotations

import os
import platform
import sys


def cpu_name() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> str:
  import jax

  load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  return (
    f"{cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}, JAX "
    f"{jax.__version__}, {jax.default_backend()} backend ({jax.devices()[0]}); "
    f"load average {load}"
  )


def command() -> str:
  """This run's command as typed, and the folder it ran in: for a results file."""
  typed = " ".join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
  return f"`{typed}` (run in {os.path.basename(os.getcwd())}/)"


BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"


def write_generated(path: str, body: str, title: str) -> None:
  """Writes ``body`` between the markers of the results file at ``path``, keeping
  the hand-written text around them (a new file: ``title`` above the markers)."""
  text = open(path).read() if os.path.exists(path) else ""
  generated = f"{BEGIN}\n{body}\n{END}"
  if BEGIN in text and END in text:
    text = text[: text.index(BEGIN)] + generated + text[text.index(END) + len(END) :]
  else:
    text = f"# {title}\n\n{generated}\n" + text
  with open(path, "w") as f:
    f.write(text)
