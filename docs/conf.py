"""Sphinx configuration: the guide (docs/guide/, pages of their own) and the API reference (docs/api/).

Build with ``python3 dev.py docs`` (every warning an error, as Read the Docs builds it).
"""

from __future__ import annotations

import tomllib  # the docs build needs Python 3.11+ (Sphinx 9), which has it
from pathlib import Path

from docutils.nodes import Element
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

import pacifica.downloader

ROOT = Path(__file__).resolve().parent.parent
# The project's name and author are written once, in pyproject.toml.
with open(ROOT / "pyproject.toml", "rb") as file:
    METADATA = tomllib.load(file)["project"]

project = METADATA["name"]
author = ", ".join(person["name"] for person in METADATA["authors"])
copyright = author
release = version = pacifica.downloader.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode", "myst_parser"]
exclude_patterns = ["_build"]

html_theme = "sphinx_rtd_theme"

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autoclass_content = "both"  # the constructors' docstrings say what each argument means
autodoc_preserve_defaults = True  # "timeouts=Timeouts()", not the value's whole repr
python_use_unqualified_type_names = True

# The guide's links to a section of another page (released-api.md#the-04-call-style) are GitHub's heading
# slugs, so that they work on GitHub too: these make the same ones.
myst_heading_anchors = 3


def package_references(app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: Element) -> Element | None:
    """Resolve a name a docstring gives bare (:class:`InvalidInputError`) wherever the package documents it.

    Sphinx looks such a name up in the docstring's own module and at the top level only, but a module's
    docstrings name what it imports.  A name with no match, or with several, is left to Sphinx to report.
    """
    if node.get("refdomain") != "py" or node.get("refspecific"):
        return None
    node["refspecific"] = True  # the Python domain's search for ".name": every object whose name ends so
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], node["reftarget"], node, contnode)


def setup(app: Sphinx) -> None:
    """Connect the hook above."""
    app.connect("missing-reference", package_references)
