"""Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html``."""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Importing the package for autodoc must not touch an accelerator or the network.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import metriclearn  # noqa: E402

project = "metriclearn"
author = "the metriclearn authors"
copyright = "the metriclearn authors, Apache-2.0"  # noqa: A001
release = metriclearn.__version__
version = release

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "myst_parser",  # the results pages include the repository's Markdown reports
]

# Docstrings are Google style (Args / Returns / References) with reST maths.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# "Attributes:" as :ivar: fields: a NamedTuple's or a Flax module's fields are then not
# described twice (once from the docstring, once by autodoc as members).
napoleon_use_ivar = True
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
add_module_names = False

exclude_patterns = ["_build"]
# The benchmark reports (benchmarks/*.md, written by the benchmark scripts) go from a
# "#" title straight to "###" tables; MyST warns on the skipped level, nothing else.
suppress_warnings = ["myst.header"]
html_theme = "furo"
html_title = f"metriclearn {release}"
