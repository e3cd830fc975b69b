"""Every docstring example runs as written; the code keeps the project's style."""

import doctest
import importlib
import pathlib
import pkgutil
import shutil
import subprocess
import sys

import pytest

import metriclearn

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = sorted(
  m.name for m in pkgutil.walk_packages(metriclearn.__path__, "metriclearn.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
  result = doctest.testmod(module, optionflags=flags, verbose=False)
  assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def _ruff():
  exe = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent))
  # ruff is in the test extra: without it the style cannot be checked at all
  assert exe, "ruff is not installed: pip install -e '.[test]'"
  return exe


def test_ruff_lint():
  out = subprocess.run([_ruff(), "check", str(ROOT)], capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format():
  out = subprocess.run(
    [_ruff(), "format", "--check", str(ROOT)], capture_output=True, text=True
  )
  assert out.returncode == 0, out.stdout + out.stderr


def test_readme_python_examples_run_as_written():
  # (```py blocks use the main job's outputs, a trained encoder: the same steps run on
  # a smoke run's encoder in test_experiments.py)
  text = (ROOT / "README.md").read_text()
  blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
  assert blocks, "the README has no python example"
  for block in blocks:
    exec(compile(block, "README.md", "exec"), {})


def test_mypy_finds_no_type_errors_in_the_package():
  exe = shutil.which("mypy", path=str(pathlib.Path(sys.executable).parent))
  # mypy is in the test extra: the package ships py.typed, so its hints must check
  assert exe, "mypy is not installed: pip install -e '.[test]'"
  # the files and options are pyproject.toml's [tool.mypy]
  out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr
