"""Sphinx configuration of gradscope's documentation site (``make docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import gradscope  # noqa: E402  (after the path set-up above)

project = "gradscope"
author = "the gradscope developers"
copyright = "the gradscope developers"
release = version = gradscope.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "gradscope_docs",
]

# gallery/ holds the examples' sources; sphinx-gallery writes their pages into generated/.
exclude_patterns = ["_build", "gallery", "generated/gallery/*.ipynb", "generated/gallery/*.py"]
templates_path: list[str] = []
# Command lines are quoted in prose: "--input" must not become an en dash.
smartquotes = False
html_theme = "furo"
html_title = f"gradscope {release}"
html_static_path = ["_static"]
html_css_files = ["gradscope.css"]
# Pages the gallery's examples wrote (report.html), copied to the site as they are.
EXTRA = HERE / "generated" / "extra"
EXTRA.mkdir(parents=True, exist_ok=True)
html_extra_path = [str(EXTRA)]
html_permalinks_icon = "#"
html_theme_options = {"navigation_with_keys": True}
html_show_sourcelink = False
# Self-contained pages: no web fonts, no analytics, nothing loaded from the network.
html_copy_source = False

# Every reference must resolve; only names from other projects (which would need network
# access to their inventories) are let through.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|nn|np|numpy|matplotlib|hypothesis|lightning|pytorch_lightning)(\..*)?"),
    (r"py:.*", r"(transformers|tensorboard|graphviz|optim|Tensor|Module|Optimizer)(\..*)?"),
    (r"py:.*", r"(collections|typing|os|pathlib|types|re|weakref|contextlib|enum)(\..*)?"),
    (r"py:.*", r"(Path|PathLike|Sequence|Mapping|Iterable|Iterator|Callable|Any|TextIO)"),
    (r"py:.*", r"(SearchStrategy|DrawFn|SummaryWriter|Trainer|TrainerCallback|Callback)"),
    (r"py:.*", r"(LightningModule|TrainingArguments|TrainerState|TrainerControl|dtype|device)"),
    (r"py:.*", r"(GradScaler|_?[A-Z]\w*Protocol|T|P|R|Self|optional)"),
    # Type aliases and private classes named in signatures: shown as text, not linked (a
    # user never imports them). A reference to anything else in gradscope must resolve.
    (r"py:.*", r"(Keep|ParamsLike|Params|Reference|GraphData|WalkResult|GradRecorder|Walked)"),
    (r"py:.*", r"gradscope(\.\w+)*\._\w+(\.\w+)*"),
]

autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True

sphinx_gallery_conf = {
    "examples_dirs": ["gallery"],
    "gallery_dirs": ["generated/gallery"],
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib", "gradscope_docs.written_files_scraper"),
    "capture_repr": ("_repr_html_", "__repr__"),
    "ignore_repr_types": r"(matplotlib|PosixPath|NoneType)",
    "reset_modules": ("matplotlib", "gradscope_docs.reset_seed"),
    "show_signature": False,
    "show_memory": False,
    "min_reported_time": 3600,  # timings depend on the machine: keep them off the pages
    # its timing pages load jQuery and DataTables from CDNs: the site must load nothing
    "write_computation_times": False,
    "parallel": False,
}
