"""What the published package promises: light imports, __all__, the files it ships."""

import ast
import importlib
import pathlib
import pkgutil
import subprocess
import sys
import tomllib

import pytest

import metriclearn

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("flax", "orbax", "tensorflow_datasets", "matplotlib")
LIGHT = ("losses", "distances", "masks", "reduce", "miners", "pairs")
PUBLIC = ["metriclearn"] + sorted(
  m.name
  for m in pkgutil.walk_packages(metriclearn.__path__, "metriclearn.")
  if not any(part.startswith("_") for part in m.name.split("."))
)


def imported_names(path: pathlib.Path) -> set[str]:
  """Every module a file imports, and ``module.name`` for each ``from`` import."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    elif isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
  return names


def test_the_loss_modules_load_none_of_the_heavy_dependencies():
  # A fresh interpreter: this one has imported everything already. A user who wants one
  # loss pays for JAX only, not for the trainer (Flax, Orbax) or the data sets.
  imports = "; ".join(f"import metriclearn.{name}" for name in LIGHT)
  code = f"import sys; {imports}; print([m for m in {HEAVY!r} if m in sys.modules])"
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
  )
  assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_top_level_package_loads_its_submodules_on_first_use():
  assert set(dir(metriclearn)) >= set(metriclearn.__all__)
  assert metriclearn.training is importlib.import_module("metriclearn.training")
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    metriclearn.nope  # noqa: B018


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_module_declares_all_and_each_name_exists(name):
  module = importlib.import_module(name)
  assert hasattr(module, "__all__"), f"{name} has no __all__"
  names = list(module.__all__)
  assert len(names) == len(set(names)), f"{name}.__all__ repeats a name"
  missing = [n for n in names if not hasattr(module, n)]
  assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_the_wheel_declares_its_licences_type_marker_and_the_pack():
  # (building a wheel needs the network for its build back end; tests stay offline, so
  # this checks what pyproject.toml tells setuptools to put in it, and that it exists)
  config = tomllib.loads((ROOT / "pyproject.toml").read_text())
  for path in config["project"]["license-files"]:
    assert (ROOT / path).is_file(), path
  assert "Apache License" in (ROOT / "LICENSE").read_text()
  assert "MIT License" in (ROOT / "metriclearn/data/omniglot/LICENSE").read_text()
  package_data = config["tool"]["setuptools"]["package-data"]
  assert "py.typed" in package_data["metriclearn"]
  assert {"omniglot/omniglot28.npz", "omniglot/LICENSE"} <= set(
    package_data["metriclearn.data"]
  )
  for package, files in package_data.items():
    folder = ROOT.joinpath(*package.split("."))
    for file in files:
      assert (folder / file).is_file(), f"{package}: {file}"


def test_no_module_imports_a_private_module_of_another_package():
  """``metriclearn.<pkg>._<name>`` is imported only from inside ``<pkg>``; the
  package root's own private helpers (``_checks``, ``_files``) serve everyone."""
  root = pathlib.Path(metriclearn.__file__).parent
  offences = []
  for path in root.rglob("*.py"):
    package = ".".join(("metriclearn", *path.relative_to(root).parent.parts))
    for name in sorted(imported_names(path)):
      parts = name.split(".")
      for i, part in enumerate(parts[1:], start=1):
        if not part.startswith("_") or part.startswith("__"):
          continue
        owner = parts[:i]  # the package holding the private name or module
        while owner and not root.joinpath(*owner[1:]).is_dir():
          owner = owner[:-1]  # a module: its package
        owner = ".".join(owner)
        if owner != "metriclearn" and not package.startswith(owner):
          offences.append(f"{path.relative_to(root)} imports {name}")
  assert not offences, offences


def test_the_default_install_trains_without_tfds_or_matplotlib():
  """tensorflow-datasets (and its pyarrow) and matplotlib are extras: a fresh
  interpreter where importing them fails (sys.modules[name] = None) still loads the
  pack, and load_tfds names the extra that installs it."""
  config = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  core = " ".join(config["dependencies"])
  assert "tensorflow-datasets" not in core and "matplotlib" not in core
  extras = config["optional-dependencies"]
  assert any(d.startswith("tensorflow-datasets>=") for d in extras["tfds"])
  assert any(d.startswith("matplotlib>=") for d in extras["experiments"])
  code = """
import sys
sys.modules["tensorflow_datasets"] = sys.modules["matplotlib"] = None
from metriclearn import data, training
ds = data.load("omniglot", "background", image_size=28)
print(ds.images.shape)
try:
  data.load_tfds("mnist", "train", data_dir="/nonexistent")
except ImportError as e:
  print("ImportError:", e)
"""
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
  )
  lines = out.stdout.splitlines()
  # 964 background characters x 20 drawings
  assert lines[0] == "(19280, 28, 28, 1)", out.stdout + out.stderr
  assert lines[1].startswith("ImportError:") and "metriclearn[tfds]" in lines[1]


def test_training_imports_neither_data_nor_a_private_loss_module():
  """Device placement (meshes, sharded batches, prefetch) lives in metriclearn.parallel;
  training.py stands on it, not on metriclearn.data or losses' private modules."""
  names = imported_names(ROOT / "metriclearn/training.py")
  assert "metriclearn.parallel.Prefetcher" in names  # the check sees imports
  bad = [n for n in names if n.startswith(("metriclearn.data", "metriclearn.losses._"))]
  assert not bad, bad
