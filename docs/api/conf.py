"""Sphinx configuration of the API reference: hrrl_jax.robust from its docstrings, beside the method page.

    python -m sphinx -b html docs/api /tmp/hrrl_jax_api    # then open /tmp/hrrl_jax_api/index.html

tests/test_api_docs.py builds it and fails on any warning.
"""

import inspect
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import jax.typing  # noqa: E402
import optax  # noqa: E402
from sphinx.util.typing import stringify_annotation  # noqa: E402

import hrrl_jax  # noqa: E402
from hrrl_jax.robust import input_level, schedules  # noqa: E402

project = "hrrl_jax"
release = version = hrrl_jax.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # "method.html#4-unbiased-minibatch-estimates", as GitHub names the same headings
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple "Attributes:" as fields of the class, not a second description of each
html_theme = "alabaster"

# Readable signatures: jax.typing.ArrayLike and the package's own aliases are unions that Python expands at
# runtime; each expansion is written back as the alias's name.
TYPE_ALIASES = {
    "~hrrl_jax.robust.schedules.Hyperparameter": schedules.Hyperparameter,
    "~jax.typing.ArrayLike": jax.typing.ArrayLike,
    "~hrrl_jax.robust.input_level.PerExampleLoss": input_level.PerExampleLoss,
    "~hrrl_jax.robust.input_level.LossFunction": input_level.LossFunction,
    "~optax.Schedule": optax.Schedule,
}


def name_type_aliases(app, what, name, obj, options, signature, return_annotation):
    """Replaces each alias's expansion in a signature by the alias (the longest first, as one may hold another)."""
    for alias, expansion in sorted(TYPE_ALIASES.items(), key=lambda item: -len(str(item[1]))):
        expanded = stringify_annotation(expansion, "smart")
        signature = signature.replace(expanded, alias) if signature else signature
        return_annotation = return_annotation.replace(expanded, alias) if return_annotation else return_annotation
    return signature, return_annotation


def drop_type_docstrings(app, what, name, obj, options, lines):
    """A constant has no docstring of its own, and autodoc gives it its type's (tuple's, UnionType's): dropped."""
    type_doc = inspect.getdoc(type(obj))
    if what in ("data", "attribute") and type_doc and lines and lines[0].strip() == type_doc.splitlines()[0].strip():
        del lines[: len(type_doc.splitlines())]


def setup(app):
    app.connect("autodoc-process-signature", name_type_aliases)
    app.connect("autodoc-process-docstring", drop_type_docstrings)
