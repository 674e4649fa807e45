"""Sphinx configuration: `python -m sphinx -W -b html docs docs/_build/html`."""

import os
import sys

sys.path.insert(0, os.path.abspath("_ext"))

project = "vae-jax"
author = "the vae-jax authors"
copyright = "2026, the vae-jax authors"

extensions = [
    "myst_nb",                 # Markdown pages and the notebook, rendered from its outputs
    "sphinx.ext.autodoc",      # the API reference, from the docstrings
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "repository_links",        # every relative link in README.md and docs/ must resolve
]

html_theme = "sphinx_book_theme"
html_title = "vae-jax"
html_static_path = ["_static"]
html_theme_options = {"repository_url": "https://github.com/vae-jax/vae-jax",
                      "use_repository_button": False, "show_toc_level": 2}

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"      # the notebook's stored outputs, never re-executed here
exclude_patterns = ["_build", "README.md"]
suppress_warnings = ["mystnb.unknown_mime_type"]

default_role = "code"            # `name` in a docstring reads as code, as in Markdown
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports = ["torch"]   # vae_jax.interop.torch_reference imports it; not a dependency
autodoc_default_options = {"members": True, "show-inheritance": False}
