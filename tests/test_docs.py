"""The API reference's docstrings: one for every documented object, in the style Pyro's own use.

The documented API is what the pages under docs/api/ ask autodoc for, read from their
``.. automodule::`` directives, and each module's public members as autodoc picks them: the
names of ``__all__`` where a module has one, else the functions and classes it defines whose
names do not start with an underscore, and the methods and properties those classes define.
Every module of the package, its subpackages' included, has a page; a subpackage's page opens
with the package (its docstring), and each object is documented once, in the module that
defines it: a name a package imports from its modules (``pyro_vae.data.load_dataset``) is
documented under that module, not under the package.
``make docs`` builds the pages themselves, with warnings as errors; these tests check what
Sphinx does not.

Every parameter of a documented function, method or class constructor has a ``:param NAME:``
(:func:`required_params`): all but a method's ``self`` or ``cls``, a name starting with an
underscore (a protocol's private argument, torch's ``_instance``), and an ``*args`` or
``**kwargs`` that is only passed through (:func:`passed_through`: used only as an argument of
calls, ``f(*args)`` or ``f(args)``, so the callee documents it). A class documents its
constructor's parameters where the constructor is its own, or inherited from a class the
reference does not show (a private base); one inherited from a documented class is documented
there, and one from outside the package (torch, Pyro, ``Exception``) by its authors.

Every dotted name ``pyro_vae.X.Y`` that the README, the docs' pages, the notebooks' README and
the package's docstrings and comments use is an attribute path from the package
(:func:`resolves`): what a reader types after ``import pyro_vae`` works.
"""

import ast
import importlib
import inspect
import io
import pkgutil
import re
import textwrap
import tokenize
from pathlib import Path

import pyro_vae

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api"
# the modules with no page: ``python -m pyro_vae``, and the version (pyro_vae.__version__)
UNDOCUMENTED_MODULES = {"pyro_vae.__main__", "pyro_vae.version"}
# every module of the package, its subpackages and their modules included
MODULES = {"pyro_vae"} | {m.name for m in pkgutil.walk_packages(pyro_vae.__path__, "pyro_vae.")}

AUTOMODULE = re.compile(r"^\.\. automodule:: (\S+)\n((?:   :.*\n)*)", re.MULTILINE)
PARAM = re.compile(r":param(?: [^:\n]+)? \\?\*{0,2}(\w+):")
# Google's "Args:" and "Returns:" sections, and NumPy's underlined headings
GOOGLE = re.compile(
    r"^\s*(Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Attributes|Examples?|"
    r"Notes?|Keyword Args|Other Parameters|See Also|References|Warnings?|Todo):\s*$",
    re.MULTILINE,
)
NUMPY = re.compile(r"^\s*[A-Z][\w ]*\n\s*-{3,}\s*$", re.MULTILINE)
# a dotted name (pyro_vae.training.state.TrainState), not a path (pyro_vae/runs/folder.py)
DOTTED = re.compile(r"(?<![\w./-])pyro_vae(?:\.\w+)+")
# the prose that names the package's objects (docs/_build/ is the built site)
PROSE = ["README.md", "notebooks/README.md", "docs/**/*.md", "docs/**/*.rst"]


def automodules() -> dict[str, list[str] | None]:
    """Each documented module, with the members its directive names (``None``: autodoc's pick,
    for a bare ``:members:``; none without the option)."""
    return {name: members for page in pages().values() for name, members in page.items()}


def pages() -> dict[str, dict[str, list[str] | None]]:
    """Each page of docs/api/, with its modules in order, as :func:`automodules` gives them."""
    found = {}
    for page in sorted(API.glob("*.rst")):
        found[page.name] = modules = {}
        for name, options in AUTOMODULE.findall(page.read_text()):
            members = re.search(r":members:(.*)", options)
            if members is None:
                modules[name] = []
            elif members.group(1).strip():
                modules[name] = [m.strip() for m in members.group(1).split(",")]
            else:
                modules[name] = None
    return found


def own_doc(obj) -> str | None:
    """The docstring ``obj`` was written with, not one inherited or made up for it."""
    if isinstance(obj, property):
        obj = obj.fget
    if isinstance(obj, classmethod | staticmethod):
        obj = obj.__func__
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if inspect.isclass(obj) and (doc or "").startswith(obj.__name__ + "("):
        return None  # the stand-in dataclass and NamedTuple write: the signature
    return inspect.cleandoc(doc) if doc else None


def autodoc_members(module) -> list[tuple[str, object]]:
    """The module's members autodoc documents with a bare ``:members:``: functions and classes,
    those of ``__all__`` wherever they are defined, else those the module defines."""
    if hasattr(module, "__all__"):
        names = module.__all__
    else:
        names = [n for n in vars(module) if not n.startswith("_")]
    members = []
    for name in names:
        obj = getattr(module, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue  # data: documented by a "#:" comment where it matters
        if not hasattr(module, "__all__") and obj.__module__ != module.__name__:
            continue  # imported from elsewhere, documented there
        members.append((f"{module.__name__}.{name}", obj))
    return members


def chosen_members(name: str, members: list[str] | None) -> list[tuple[str, object]]:
    """The functions and classes the directive of module ``name`` documents, by full name."""
    module = importlib.import_module(name)
    if members is None:
        return autodoc_members(module)
    chosen = [(f"{name}.{m}", getattr(module, m)) for m in members]
    return [(n, obj) for n, obj in chosen if inspect.isfunction(obj) or inspect.isclass(obj)]


def public_members(module) -> list[tuple[str, object]]:
    """The functions and classes documented under ``module`` with ``:members:``: those it
    defines. What a package imports from its own modules (``pyro_vae.data`` of
    ``pyro_vae.data.sources``) is documented in the module that defines it, and counted there
    (:func:`test_each_object_is_documented_where_it_is_defined` holds the pages to that)."""
    return [(n, obj) for n, obj in autodoc_members(module) if obj.__module__ == module.__name__]


def class_members(cls) -> list[tuple[str, object]]:
    """The methods, properties, class and static methods ``cls`` defines itself, by public name."""
    kinds = (property, classmethod, staticmethod)
    return [
        (name, member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, kinds))
    ]


def documented_objects() -> list[tuple[str, object]]:
    """Every object the API reference documents, by its full name: classes, their members, and
    functions."""
    objects = []
    for name, members in automodules().items():
        module = importlib.import_module(name)
        if members is None:
            chosen = public_members(module)
        else:
            chosen = [(f"{name}.{m}", getattr(module, m)) for m in members]
            chosen = [(n, obj) for n, obj in chosen if getattr(obj, "__module__", name) == name]
        for full_name, obj in chosen:
            objects.append((full_name, obj))
            if inspect.isclass(obj):
                objects += [(f"{full_name}.{m}", member) for m, member in class_members(obj)]
    return objects


def signature_names(obj) -> set[str] | None:
    """The parameter names of a function, or of a class's constructor; ``None`` for a property."""
    if isinstance(obj, property):
        return None
    if isinstance(obj, classmethod | staticmethod):
        obj = obj.__func__
    try:
        return set(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return None


def constructor(cls: type):
    """The ``__init__`` or ``__new__`` whose parameters ``cls``'s docstring documents: its own (a
    dataclass's or NamedTuple's included), or one inherited from a class the reference does not
    show; ``None`` where they are documented elsewhere, and for a ``Protocol``, never made."""
    if getattr(cls, "_is_protocol", False):
        return None
    owner = next(k for k in cls.__mro__ if "__init__" in vars(k) or "__new__" in vars(k))
    shown = {id(obj) for _, obj in documented_objects()}
    if not owner.__module__.startswith("pyro_vae") or (owner is not cls and id(owner) in shown):
        return None
    return vars(owner).get("__init__") or vars(owner)["__new__"]


def passed_through(fn, name: str) -> bool:
    """Whether the function ``fn`` only hands its parameter ``name`` on: every use of it is an
    argument of a call, spread (``f(*args)``, ``f(**kwargs)``) or whole (``f(args)``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError):  # a generated function (a dataclass's __init__): no source
        return False
    arguments = set()
    for call in ast.walk(tree):
        if isinstance(call, ast.Call):
            arguments |= {id(a.value if isinstance(a, ast.Starred) else a) for a in call.args}
            arguments |= {id(k.value) for k in call.keywords}
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name]
    return bool(uses) and all(id(use) in arguments for use in uses)


def required_params(obj) -> list[str]:
    """The parameters of ``obj`` (a function, a method, or a class's constructor) that its
    docstring must document with ``:param NAME:``: see the module's docstring for the rule."""
    if isinstance(obj, property):
        return []
    if inspect.isclass(obj):
        fn = constructor(obj)
        if fn is None:
            return []
        parameters = list(inspect.signature(obj).parameters.values())  # self already left out
    else:
        fn = obj.__func__ if isinstance(obj, classmethod | staticmethod) else obj
        parameters = list(inspect.signature(fn).parameters.values())
        owner = inspect.unwrap(fn).__qualname__.rpartition(".")[0]
        if owner and not owner.endswith("<locals>") and not isinstance(obj, staticmethod):
            parameters = parameters[1:]  # a method's self, or a classmethod's cls
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [
        p.name
        for p in parameters
        if not p.name.startswith("_") and not (p.kind in variadic and passed_through(fn, p.name))
    ]


def test_every_module_has_a_page():
    assert {"pyro_vae.data.sources", "pyro_vae.runs.folder"} <= MODULES  # subpackages walked
    documented = set(automodules())
    assert sorted(MODULES - documented - UNDOCUMENTED_MODULES) == [], "modules with no page"
    assert sorted(documented - MODULES) == [], "pages of modules that do not exist"


def test_a_subpackage_page_opens_with_the_package_and_holds_its_modules():
    packages = {m for m in MODULES if hasattr(importlib.import_module(m), "__path__")}
    wrong = []
    for page, modules in pages().items():
        for package in packages & set(modules) - {"pyro_vae"}:
            if list(modules)[0] != package:
                wrong.append(f"{page}: {package} is not its first automodule")
            own = {package} | {m for m in MODULES if m.rpartition(".")[0] == package}
            if strays := sorted(set(modules) - own):
                wrong.append(f"{page}: {', '.join(strays)}, of another package")
            if missing := sorted(own - set(modules) - UNDOCUMENTED_MODULES):
                wrong.append(f"{page}: {', '.join(missing)} not on the package's page")
    assert wrong == []


def test_each_object_is_documented_where_it_is_defined():
    elsewhere = [
        f"{name} (defined in {obj.__module__})"
        for module, members in automodules().items()
        for name, obj in chosen_members(module, members)
        if obj.__module__ != module
    ]
    assert elsewhere == [], "documented under a module that imports it: " + ", ".join(elsewhere)


def test_every_documented_object_has_a_docstring():
    missing = [name for name, obj in documented_objects() if not own_doc(obj)]
    assert missing == [], "no docstring: " + ", ".join(missing)


def test_params_name_parameters_of_the_signature():
    stale = []
    for name, obj in documented_objects():
        params = signature_names(obj)
        for param in PARAM.findall(own_doc(obj) or ""):
            if params is not None and param not in params:
                stale.append(f"{name}: :param {param}:")
    assert stale == [], "a :param: the signature does not have: " + "; ".join(stale)


def test_every_parameter_is_documented():
    objects = documented_objects()
    exports = {name: getattr(pyro_vae, name) for name in pyro_vae.__all__}
    callables = {name: obj for name, obj in exports.items() if callable(obj)}  # not MODELS
    shown = {id(obj) for _, obj in objects}
    assert [name for name, obj in callables.items() if id(obj) not in shown] == []
    missing, checked = [], 0
    for name, obj in objects:
        documented = set(PARAM.findall(own_doc(obj) or ""))
        required = required_params(obj)
        checked += len(required)
        missing += [f"{name}: {param}" for param in required if param not in documented]
    assert checked > 500  # the rule reaches the parameters it is meant to
    assert missing == [], "parameters with no :param: " + "; ".join(missing)


def test_only_a_variadic_that_is_handed_on_is_passed_through():
    def spread(*args, **kwargs):
        return print(*args, **kwargs)

    def whole(model, *args, **kwargs):
        return model(args, kwargs)

    def reads(*batch):
        return print(batch[0])

    def unused(*exc):
        return None

    assert passed_through(spread, "args") and passed_through(spread, "kwargs")
    assert passed_through(whole, "args") and passed_through(whole, "kwargs")
    assert not passed_through(reads, "batch") and not passed_through(unused, "exc")
    assert required_params(spread) == [] and required_params(reads) == ["batch"]


def test_docstrings_use_field_lists_not_google_or_numpy_sections():
    docs = [(name, importlib.import_module(name).__doc__ or "") for name in automodules()]
    docs += [(name, own_doc(obj) or "") for name, obj in documented_objects()]
    sectioned = [name for name, doc in docs if GOOGLE.search(doc) or NUMPY.search(doc)]
    assert sectioned == [], "Google or NumPy sections (use :param x: and :returns:): " + ", ".join(
        sectioned
    )


def test_the_package_page_lists_every_export():
    page = (API / "index.rst").read_text()
    listed = re.search(r"\.\. autosummary::\n((?:   .*\n|\n)*)", page).group(1).split()
    objects = set()
    for entry in listed:
        module, _, name = entry.lstrip("~").rpartition(".")
        objects.add(id(getattr(importlib.import_module(module), name)))
    exports = {name for name in pyro_vae.__all__ if name != "__version__"}
    missing = sorted(name for name in exports if id(getattr(pyro_vae, name)) not in objects)
    assert missing == [], "exports the API reference's first page does not list"


def package_text() -> list[tuple[str, str]]:
    """Each docstring and comment of the package's source, with where it is (``path:line``)."""
    found = []
    for path in sorted((ROOT / "pyro_vae").rglob("*.py")):
        source, where = path.read_text(), path.relative_to(ROOT)
        for node in ast.walk(ast.parse(source)):
            kinds = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            if isinstance(node, kinds) and ast.get_docstring(node, clean=False):
                line = node.body[0].lineno
                found.append((f"{where}:{line}", ast.get_docstring(node, clean=False)))
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                found.append((f"{where}:{token.start[0]}", token.string))
    return found


def resolves(name: str) -> bool:
    """Whether ``name`` is an attribute path from the package, once the module it starts with is
    imported, as ``import pyro_vae.analysis.plots`` and then ``pyro_vae.analysis.plots.plot_elbo``
    would have it.

    A submodule shadowed by a name the package imports under the same name (the function
    ``pyro_vae.train`` over a module ``pyro_vae/train.py``) does not resolve past that name.
    """
    parts = name.split(".")
    # the longest of the package's own modules the name starts with (MODULES: found on the
    # package's __path__; an import could find others elsewhere)
    for i in range(len(parts), 1, -1):
        if ".".join(parts[:i]) in MODULES:
            importlib.import_module(".".join(parts[:i]))
            break
    obj = pyro_vae
    for part in parts[1:]:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_dotted_names_in_the_docs_resolve():
    pages = [p for pattern in PROSE for p in ROOT.glob(pattern) if "_build" not in p.parts]
    texts = [(str(p.relative_to(ROOT)), p.read_text()) for p in pages]
    texts += package_text()
    names = [(where, name) for where, text in texts for name in DOTTED.findall(text)]
    assert len({name for _, name in names}) > 50  # the scan finds the names it is meant to
    broken = sorted({f"{where}: {name}" for where, name in names if not resolves(name)})
    assert broken == [], "names that are no attribute path from pyro_vae: " + "; ".join(broken)
