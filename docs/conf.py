"""Sphinx configuration of the pyro-vae documentation site: ``make docs`` builds docs/_build/html.

The guide pages are the README's sections (one home for that text), the notebooks are rendered
with whatever outputs they were committed with (never executed here), and the API reference is
autodoc over the package's docstrings, nitpicky so that a broken cross-reference fails the build.
"""

import importlib
import logging
import re
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout, whether or not it is installed

import pyro_vae  # noqa: E402

# arviz tells its own handler, at INFO, which of its optional packages it lacks when autodoc
# looks at it: noise in a build whose every message should be a problem
logging.getLogger("arviz.preview").setLevel(logging.WARNING)

project = "pyro-vae"
copyright = "the pyro-vae authors"
version = release = pyro_vae.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "myst_nb"]

exclude_patterns = ["_build"]
# a guide page is a README section, whose first heading is a level-2 one ("## The model")
suppress_warnings = ["myst.header"]
html_theme = "furo"
html_title = f"pyro-vae {release}"

# autodoc: the package's docstrings, in source order; constructor parameters are in the class's
# docstring, as in Pyro's own documentation. Each automodule says :members: itself: a default
# "members" would override a page's own list (cli.rst's "main")
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_inherit_docstrings = False  # torch's forward() docstring is not ours to show

# a reference to anything inside pyro_vae must resolve; the packages around it cannot without
# intersphinx (no network at build time), so references into them are not checked: by module,
# or as a constructor's annotations name them (nn.Module, Path), which autodoc leaves unqualified
nitpicky = True
EXTERNAL = (
    "torch|pyro|numpy|np|arviz|az|matplotlib|sklearn|scipy|tqdm|torchvision|PIL"
    "|collections|typing|pathlib|os|argparse|contextlib|dataclasses|enum|types|signal|datetime"
    "|nn|Path|dist"
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({EXTERNAL})(\..*)?"),
    # a private name (a helper class in a type hint, say) is undocumented by design
    (r"py:.*", r"(.*\.)?_[A-Za-z]\w*"),
    # the loss functions' type alias of pyro_vae.infer.elbo, a Callable
    (r"py:class", r"(.*\.)?LossFn"),
]

# the notebooks are rendered as committed, outputs and all: the docs build never runs them
nb_execution_mode = "off"


def copy_notebooks():
    """Copy ../notebooks/*.ipynb into docs/notebooks/ (git-ignored): Sphinx reads only its own tree.

    A copy keeps its source's modification time, so an unchanged notebook is not read again.
    """
    target = DOCS / "notebooks"
    target.mkdir(exist_ok=True)
    sources = {p.name: p for p in (ROOT / "notebooks").glob("*.ipynb")}
    for stale in target.glob("*.ipynb"):
        if stale.name not in sources:
            stale.unlink()
    for name, source in sources.items():
        copy = target / name
        if not copy.exists() or copy.stat().st_mtime != source.stat().st_mtime:
            shutil.copy2(source, copy)


def write_guide_pages():
    """Write docs/guide/SLUG.md (git-ignored) for each ``<!-- guide:SLUG -->`` line of README.md.

    Each page includes the README from its marker to the next one, so the text has one home.
    """
    readme = (ROOT / "README.md").read_text()
    markers = re.findall(r"^<!-- guide:([a-z0-9-]+) -->$", readme, flags=re.MULTILINE)
    target = DOCS / "guide"
    target.mkdir(exist_ok=True)
    for stale in target.glob("*.md"):
        if stale.stem not in markers:
            stale.unlink()
    for slug, after in zip(markers, markers[1:] + [None], strict=True):
        lines = ["```{include} ../../README.md", f":start-after: <!-- guide:{slug} -->"]
        if after is not None:
            lines.append(f":end-before: <!-- guide:{after} -->")
        page = "\n".join(lines + ["```", ""])
        path = target / f"{slug}.md"
        if not path.exists() or path.read_text() != page:
            path.write_text(page)


def python_object(name):
    """The object ``name`` (``pyro_vae.validation.ConfigError``) names in Python, or ``None``."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def resolve_as_python_does(app, env, node, contnode):
    """Resolve a reference Sphinx did not find as Python resolves the name where the docstring
    is: ``ConfigError`` in pyro_vae.validation, or ``pyro_vae.VAE``, is the class imported there,
    and is documented where it is defined. A name Python does not know stays unresolved."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    module = node.get("py:module")
    for name in [f"{module}.{target}", target] if module else [target]:
        obj = python_object(name)
        module_name = getattr(obj, "__module__", None) or ""
        if module_name.split(".")[0] != "pyro_vae" or not hasattr(obj, "__qualname__"):
            continue
        found = env.get_domain("py").resolve_xref(
            env,
            node["refdoc"],
            app.builder,
            node["reftype"],
            f"{module_name}.{obj.__qualname__}",
            node,
            contnode,
        )
        if found is not None:
            return found
    return None


def skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Leave out a NamedTuple's fields ("Alias for field number 0"): its docstring's
    ``:param:`` list says what each is."""
    return skip or (obj.__doc__ or "").startswith("Alias for field number") or None


def setup(app):
    app.connect("missing-reference", resolve_as_python_does)
    app.connect("autodoc-skip-member", skip_namedtuple_fields)
    copy_notebooks()
    write_guide_pages()
