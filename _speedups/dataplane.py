"""The compiled data plane: the request path's own modules, compiled from their Python source.

The modules below are written once, in Python; that source is the pure-Python twin and the
specification. For the compiled build each is copied to ``build/dataplane/`` with a generated
augmenting ``.pxd`` that declares the listed classes as extension types: every attribute the
class assigns on ``self`` as a C slot (typed with its data plane class when the source's
annotations say which one it holds, so that reading its attributes is a C struct access; a C
``bint`` when mypy holds it to ``bool``), and every plain method as a ``cpdef`` one (called
through the class's C method table from compiled code that knows the class), its parameters,
result and annotated local variables typed likewise. The copies are compiled by Cython
into ``harbor_router/_compiled/<module>``; the declarations cimport each other by the modules'
run-time names (``harbor_router.<module>``). Attribute access, method calls and instance
creation then cost what they cost in C instead of the interpreter's dictionary and frame
work; the behaviour is the source's. ``harbor_router/__init__.py`` puts ``_compiled/`` first
on the package's path unless ``HARBOR_ROUTER_NO_EXTENSIONS`` is set, so
``harbor_router.protocol`` is the compiled module when it was built and the source otherwise.

A class named here may extend one other class named here (``Relay(Sink)``: the extension type's
base, whose methods the subclass overrides in the C method table, so that code typed with the
base calls the subclass's); it must not subclass a Python class other than ``asyncio.Protocol``
(whose base is dropped in the copy: uvloop and asyncio take any object with the protocol
methods).
"""

from __future__ import annotations

import ast
import pathlib
import re

# module → the classes that become extension types (the rest of the module is compiled as is)
MODULES: dict[str, tuple[str, ...]] = {
    "protocol": ("Connections", "Request", "FastPath", "HttpProtocol"),
    "upstream": ("Sink", "UpstreamConnection", "UpstreamPool"),
    "relay": ("HeadDeadlines", "Relay"),
    "forwarding": ("Forwarder",),
    "handler": ("RequestHandler",),
    "routes": ("Route", "Router"),
    "headers": ("Rewriter",),
    "mapping": ("MappingCache",),
    "tiers": ("Tiers",),
    "breaker": ("Breaker", "Breakers"),
    "metrics": ("Metrics",),
    "responses": (),
    "replies": (),
    "auth": ("Credentials", "Decisions"),
}
# module → its functions declared ``cpdef``: the data plane's modules that import one by name
# (``from .responses import status_line``) call it in C; only ever called there, never passed
# as a value (a C function is not an object), and not imported from them by other modules
# (the name is then no attribute of the importing module)
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "responses": ("status_line",),
    "breaker": ("is_failure",),
    "_wire": ("valid_name", "valid_tag", "valid_digest", "end_to_end", "build_head",
              "scan_response", "whole_response", "renamed_tag_response", "head_fields",
              "scan_request", "forward_head",
              "observe", "write_to", "count_request", "count_upstream", "count_answer",
              "perf_counter", "read_from", "send_to"),
}  # fmt: skip
# module → the extension types of its compiled twin that the data plane's modules know by
# name (``from ._cache import TTLCache``, ``from ._wire import RequestScan``): such a module
# cimports them with its functions (its copy's Python import leaves them out), and they are typed
# like a data plane class where the source says one is held (``self.scan = RequestScan()``, a
# parameter or local annotated with one), and an attribute annotated with one, subscripted
# (``TTLCache[V]``) or not, maybe ``| None``, is declared as it: reading their attributes is a C
# struct access, their cpdef methods C calls
TYPES: dict[str, tuple[str, ...]] = {
    "_cache": ("TTLCache", "Memo"),
    "_wire": ("RequestScan", "ResponseScan"),
}
# a module of FUNCTIONS or TYPES whose names are declared elsewhere: ``_wire``'s and
# ``_cache``'s compiled twins, whose hand-written declarations (``_speedups/_wire_c.pxd``,
# ``_cache_c.pxd``, the .pyx's own) the compiled modules cimport; the source, and the twin
# build, import from ``_wire`` and ``_cache`` as before
DECLARED_IN: dict[str, str] = {"_wire": "_wire_c", "_cache": "_cache_c"}
# what a module imported by name cimports instead: FUNCTIONS and TYPES together
_CIMPORTED: dict[str, tuple[str, ...]] = {
    module: FUNCTIONS.get(module, ()) + TYPES.get(module, ()) for module in {*FUNCTIONS, *TYPES}
}
_DROPPED_BASES = ("asyncio.Protocol",)
# class → the size of its free list (Cython's ``@cython.freelist``): that many freed instances
# are kept for the next ones instead of going back to the allocator (made once a request)
FREELISTS: dict[str, int] = {"Request": 16}
# The declarations alone type the compiled modules: the source's annotations are mypy's
# (Cython would read ``float`` as a C double, and a method's declared signature must be
# the whole truth about its arguments).
DIRECTIVES = {"annotation_typing": False}


def _self_attribute(node: ast.AST) -> str | None:
    """``name`` when ``node`` is ``self.<name>``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.attr if node.value.id == "self" else None
    return None


def _attributes(cls: ast.ClassDef) -> list[str]:
    """Every ``self.<name>`` assigned in the class, and its ``__slots__``, in first-seen order;
    not its properties, methods or class attributes."""
    own = {
        node.name for node in cls.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    own |= {
        target.id
        for node in cls.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id != "__slots__"
    }
    own |= {
        node.target.id
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    names: list[str] = []
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            assert isinstance(node.value, ast.Tuple | ast.List)
            names += [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            names += filter(None, map(_self_attribute, ast.walk(target)))
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n)) and n not in own]


# every extension type of the data plane → its module
KNOWN: dict[str, str] = {
    cls: module for module, names in (*MODULES.items(), *TYPES.items()) for cls in names
}
# the hand-declared types of TYPES → their module
_FOREIGN: dict[str, str] = {cls: module for module, names in TYPES.items() for cls in names}


def _one_type(node: ast.expr | None) -> ast.expr | None:
    """The one type an annotation names, ``| None`` taken off (a string one parsed first);
    None for a union of several, or no annotation."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        node = ast.parse(node.value, mode="eval").body
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        sides = [
            side
            for side in (node.left, node.right)
            if not (isinstance(side, ast.Constant) and side.value is None)
        ]
        return _one_type(sides[0]) if len(sides) == 1 else None
    return node


def _annotated_class(node: ast.expr | None) -> str | None:
    """The data plane class an annotation names (``X``, ``X | None``, ``module.X``), if any."""
    node = _one_type(node)
    if isinstance(node, ast.Name) and node.id in KNOWN:
        return node.id
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and KNOWN.get(node.attr) == node.value.id
    ):
        return node.attr
    return None


# builtin containers an attribute may be declared as (exactly these types: mypy's view of the
# source allows a subclass, so the tests are what says no attribute ever holds one)
_CONTAINERS = ("dict", "list", "set")


def _annotated_attribute(node: ast.expr | None) -> str | None:
    """:func:`_annotated_class`, or the builtin container (``dict[K, V]``, ``list[T]``,
    ``set[T]``, maybe ``| None``) or type of :data:`TYPES` an attribute's annotation names."""
    known = _annotated_class(node)
    node = _one_type(node)
    if known is not None or node is None:
        return known
    if isinstance(node, ast.Subscript):
        node = node.value
    kinds = (*_CONTAINERS, *_FOREIGN)  # a type of TYPES: cimported where it is imported
    return node.id if isinstance(node, ast.Name) and node.id in kinds else None


def _value_class(value: ast.expr, params: dict[str, str | None]) -> str | None:
    """The data plane class or builtin container an assigned value is (``"None"`` for
    None), if the source says: an annotated parameter, a constructor call, a display or
    comprehension, either branch of ``a if c else b``."""
    if isinstance(value, ast.Constant) and value.value is None:
        return "None"
    if isinstance(value, ast.Dict | ast.DictComp):
        return "dict"
    if isinstance(value, ast.List | ast.ListComp) or (
        isinstance(value, ast.BinOp)
        and isinstance(value.op, ast.Mult)
        and isinstance(value.left, ast.List)
    ):
        return "list"
    if isinstance(value, ast.Set | ast.SetComp):
        return "set"
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
        called = value.func.id  # a constructor of a data plane class or a container
        return called if called in KNOWN or called in _CONTAINERS else None
    if isinstance(value, ast.Name):
        return params.get(value.id)
    if isinstance(value, ast.IfExp):
        answers = {_value_class(value.body, params), _value_class(value.orelse, params)} - {"None"}
        return answers.pop() if len(answers) == 1 else None
    return None


def _attribute_classes(cls: ast.ClassDef) -> dict[str, str]:
    """Attributes that hold one data plane class (or None), from what the source says of
    them: ``self.x: X = ...``, ``self.x = param`` with ``param: X``, ``self.x = X(...)``
    (mypy holds the source to these). An attribute with two different answers, or one the
    source does not give, holds any object."""
    found: dict[str, set[str | None]] = {}
    for method in cls.body:
        if not isinstance(method, ast.FunctionDef):
            continue
        params = {
            arg.arg: _annotated_class(arg.annotation)
            for arg in (*method.args.args, *method.args.kwonlyargs)
        }
        for node in ast.walk(method):
            if isinstance(node, ast.AnnAssign):
                targets, answer = [node.target], _annotated_attribute(node.annotation)
            elif isinstance(node, ast.Assign):
                targets, answer = node.targets, _value_class(node.value, params)
                if answer == "None":
                    continue  # None fits any extension type
            else:
                continue
            for target in targets:
                attr = _self_attribute(target)
                if attr is not None:
                    found.setdefault(attr, set()).add(answer)
    return {
        attr: next(iter(answers))
        for attr, answers in found.items()
        if len(answers) == 1 and None not in answers
    }


# the scalar types a value is declared a C one of (what mypy infers from an attribute's first
# assignment, or its annotation, and holds every later one to); ints and floats stay objects:
# typed, their boxing for Python callers cost more than it saved. ``Seconds`` (``_wire``'s
# alias of float, for clock readings and spans) is a C double where the source says so: an
# attribute, parameter, result or local annotated with it, passed between compiled code and
# ``_wire``'s C clock without a float object made; ``Status`` (``responses``' alias of int, for
# an HTTP status) likewise a C int, from ``_wire.ResponseScan.status`` to the status line, the
# client's accounting and the metrics' tables without an int object made; ``Count``
# (``metrics``' alias of int, for a counter a request moves) a C long long, added to in C
_SCALARS = {"bool": "bint", "Seconds": "double", "Status": "int", "Count": "long long"}


def _scalar_annotation(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        node = ast.parse(node.value, mode="eval").body
    return node.id if isinstance(node, ast.Name) and node.id in _SCALARS else None


def _scalar_value(value: ast.expr, params: dict[str, str | None]) -> str | None:
    """The scalar type of an assigned value as mypy infers it: a literal (``-`` one too) or
    an annotated parameter."""
    if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub):
        value = value.operand
    if isinstance(value, ast.Constant):
        kind = type(value.value).__name__
        return kind if kind in _SCALARS else None
    if isinstance(value, ast.Name):
        return params.get(value.id)
    return None


def _attribute_scalars(cls: ast.ClassDef) -> dict[str, str]:
    """Attributes whose first assignment (``__init__`` first, then in the source's order)
    makes them one of :data:`_SCALARS` for mypy (``self.x = False``, ``self.x = flag`` with
    ``flag: bool``, ``self.x: bool = ...``): they become C values. An attribute first
    assigned anything else (None, a call, a tuple's item) stays an object."""
    methods = [m for m in cls.body if isinstance(m, ast.FunctionDef)]
    methods.sort(key=lambda m: m.name != "__init__")
    first: dict[str, str | None] = {}
    for method in methods:
        params = {
            arg.arg: _scalar_annotation(arg.annotation)
            for arg in (*method.args.args, *method.args.kwonlyargs)
        }
        assigns = [n for n in ast.walk(method) if isinstance(n, ast.Assign | ast.AnnAssign)]
        for node in sorted(assigns, key=lambda n: (n.lineno, n.col_offset)):
            if isinstance(node, ast.AnnAssign):
                targets, kind = [node.target], _scalar_annotation(node.annotation)
            else:
                targets, kind = node.targets, _scalar_value(node.value, params)
            for target in targets:
                for sub in ast.walk(target):
                    attr = _self_attribute(sub)
                    if attr is not None:  # a tuple's item: not known
                        first.setdefault(attr, kind if sub is target else None)
    return {attr: _SCALARS[kind] for attr, kind in first.items() if kind is not None}


_CLOSURES = (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.GeneratorExp, ast.Yield,
             ast.YieldFrom, ast.Await)  # fmt: skip


def _c_type(annotation: ast.expr | None) -> str | None:
    """What a parameter or return annotation is declared as: its data plane class or C
    scalar, if it has one."""
    scalar = _scalar_annotation(annotation)
    return _SCALARS[scalar] if scalar is not None else _annotated_class(annotation)


def _cpdef(method: ast.stmt, bound: bool = True) -> str | None:
    """The C-callable declaration of a plain method (its parameters and result typed where
    they are annotated with a data plane class or ``bool``), or None for one that must stay a
    Python method: a decorated, special, async or generator method, one with ``*args``,
    ``**kwargs`` or keyword-only parameters, or one that makes a closure (Cython compiles
    none of these as a C method). ``bound``: a method (its first parameter is ``self``),
    else a function."""
    if not isinstance(method, ast.FunctionDef) or method.decorator_list:
        return None
    args = method.args
    if method.name.startswith("__") or args.vararg or args.kwarg or args.kwonlyargs:
        return None
    inner = (node for node in ast.walk(method) if node is not method)
    if args.posonlyargs or any(isinstance(node, _CLOSURES) for node in inner):
        return None
    positional = args.args
    defaults = len(positional) - len(args.defaults)
    params = []
    for index, arg in enumerate(positional):
        kind = _c_type(arg.annotation) if index or not bound else None
        text = f"{kind} {arg.arg}" if kind else arg.arg
        params.append(text + ("=*" if index >= defaults else ""))
    returns = _c_type(method.returns)
    return f"cpdef {returns + ' ' if returns else ''}{method.name}({', '.join(params)})"


def _typed_locals(method: ast.FunctionDef) -> dict[str, str]:
    """The method's local variables annotated with a data plane class or ``bool``
    (``conn: UpstreamConnection = idle.pop()``, or a bare ``route: Route`` before an
    unpacking): declared so, reading their attributes and calling their methods is C."""
    found: dict[str, str] = {}
    for node in ast.walk(method):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            kind = _c_type(node.annotation)
            if kind is not None:
                found[node.target.id] = kind
    return found


def _imported_functions(tree: ast.Module) -> list[tuple[ast.ImportFrom, list[str]]]:
    """The module's ``from .<module> import ...`` statements that name a function of
    :data:`FUNCTIONS` or a type of :data:`TYPES`, each with those names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in _CIMPORTED:
            names = [a.name for a in node.names if a.name in _CIMPORTED[node.module]]
            if any(a.asname for a in node.names if a.name in names):
                raise SystemExit(f"dataplane: a name of {node.module} imported under a name")
            if names:
                found.append((node, names))
    return found


def _without_cimported(source: str) -> str:
    """The source with the names it cimports (:func:`_imported_functions`) left out of its
    Python imports, on the same lines (a statement left empty becomes ``pass``)."""
    lines = source.splitlines(keepends=True)
    for node, names in reversed(_imported_functions(ast.parse(source))):
        rest = [a.name for a in node.names if a.name not in names]
        indent = " " * node.col_offset
        text = f"from .{node.module} import {', '.join(rest)}" if rest else "pass"
        assert node.end_lineno is not None
        span = node.end_lineno - node.lineno + 1
        lines[node.lineno - 1 : node.end_lineno] = [indent + text + "\n"] + ["\n"] * (span - 1)
    return "".join(lines)


def _known_base(cls: ast.ClassDef) -> str | None:
    """The data plane class ``cls`` extends (``class Relay(Sink)``, ``(upstream.Sink)``), if
    any: it is declared as the extension type's base, so that code typed with the base calls
    the subclass's methods through the C method table."""
    known = [name for name in map(_annotated_class, cls.bases) if name is not None]
    if len(known) > 1:
        raise SystemExit(f"dataplane: {cls.name} extends more than one data plane class")
    return known[0] if known else None


def _inherited(base: str | None, classes: dict[str, ast.ClassDef]) -> set[str]:
    """The attributes ``base`` and its own bases declare (a subclass must not again)."""
    names: set[str] = set()
    while base is not None:
        cls = classes.get(base)
        if cls is None:
            raise SystemExit(f"dataplane: base {base} not found among the data plane's classes")
        names |= set(_attributes(cls))
        base = _known_base(cls)
    return names


def _pxd(
    source: str,
    module: str,
    classes: tuple[str, ...],
    elsewhere: dict[str, ast.ClassDef] | None = None,
) -> str:
    """The declarations of ``module``'s ``classes``; ``elsewhere``: the data plane's classes of
    other modules by name (needed when one of ``classes`` extends one of them)."""
    tree = ast.parse(source)
    found = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    lines = ["# generated by _speedups/dataplane.py from the module's source", ""]
    body: list[str] = []
    cimports: set[str] = set()
    for name in classes:
        cls = found.get(name)
        if cls is None:
            raise SystemExit(f"dataplane: no class {name} at the top of the module")
        base = _known_base(cls)
        if base is None:
            body.append(f"cdef class {name}:")
        else:
            body.append(f"cdef class {name}({base}):")
            if KNOWN[base] != module:
                cimports.add(base)
        inherited = _inherited(base, {**(elsewhere or {}), **found})
        typed = {**_attribute_scalars(cls), **_attribute_classes(cls)}
        for attr in _attributes(cls):
            if attr in inherited:
                continue
            kind = typed.get(attr, "object")
            if kind in KNOWN and KNOWN[kind] != module:
                cimports.add(kind)
            body.append(f"    cdef public {kind} {attr}")
        for method in cls.body:
            declared = _cpdef(method)
            if declared is not None:
                assert isinstance(method, ast.FunctionDef)
                local = _typed_locals(method)
                if local:
                    typed_locals = ", ".join(f"{n}={kind}" for n, kind in local.items())
                    body.append(f"    @cython.locals({typed_locals})")
                body.append(f"    {declared}")
                named = [arg.annotation for arg in method.args.args[1:]] + [method.returns]
                for kind in [*map(_annotated_class, named), *local.values()]:
                    if kind in KNOWN and KNOWN[kind] != module:
                        cimports.add(kind)
        if body[-1].startswith("cdef class"):
            body.append("    pass")
        body.append("")
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name in FUNCTIONS.get(module, ()):
        declared = _cpdef(functions[name], bound=False) if name in functions else None
        if declared is None:
            raise SystemExit(f"dataplane: {module}.{name} is not a plain function")
        body.append(declared)
    # by the name the module has at run time (``harbor_router.<module>``, from ``_compiled/``)
    if any(line.lstrip().startswith("@cython.locals") for line in body):
        lines.append("import cython")
    # (a class of TYPES is cimported with the module's functions, below)
    own = sorted(c for c in cimports if KNOWN[c] in MODULES)
    lines += [f"from harbor_router.{KNOWN[c]} cimport {c}" for c in own]
    lines += [
        f"from harbor_router.{DECLARED_IN.get(node.module, node.module)} cimport {', '.join(names)}"
        for node, names in _imported_functions(tree)
        if node.module is not None
    ]
    return "\n".join([*lines, "", *body])


def _with_freelist(source: str, name: str, size: int) -> str:
    """The module with class ``name`` decorated to keep a free list of ``size`` (in the blank
    lines above it and below the ``__future__`` import: each line stays where it was)."""
    future = "from __future__ import annotations\n\n"
    source, found = re.subn(rf"\n\n\n(class {name}\b)",
                            rf"\n@cython.freelist({size})\n@cython.cclass\n\1", source)  # fmt: skip
    if future not in source or found != 1:
        raise SystemExit(f"dataplane: no room for the free list of {name}")
    return source.replace(future, "from __future__ import annotations\nimport cython\n", 1)


def _strip_bases(source: str, classes: tuple[str, ...]) -> str:
    """The copy that is compiled: the dropped bases gone, the free lists of :data:`FREELISTS`
    asked for, the cimported functions left out of its imports (:func:`_without_cimported`),
    and relative imports spelt with the package's name (what they mean at run time, where
    the module is ``harbor_router.<module>``), so that a class imported here and cimported in
    the declarations is one name."""
    for name in classes:
        for base in _DROPPED_BASES:
            source = source.replace(f"class {name}({base}):", f"class {name}:")
        if name in FREELISTS:
            source = _with_freelist(source, name, FREELISTS[name])
    source = _without_cimported(source)
    source = re.sub(r"^(\s*)from \. import ", r"\1from harbor_router import ", source, flags=re.M)
    return re.sub(r"^(\s*)from \.(\w)", r"\1from harbor_router.\2", source, flags=re.M)


def data_plane_classes(sources: dict[str, str]) -> dict[str, ast.ClassDef]:
    """Every class of :data:`MODULES` by name, from the modules' sources."""
    return {
        node.name: node
        for module, source in sources.items()
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name in MODULES[module]
    }


def _write(path: pathlib.Path, text: str | pathlib.Path) -> None:
    """``text`` (or that file's) at ``path``, unless it is there already: an unchanged file
    keeps its time, so nothing is compiled again for it."""
    if isinstance(text, pathlib.Path):
        text = text.read_text()
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def prepare(root: pathlib.Path, build: pathlib.Path) -> list[tuple[str, str]]:
    """Write the copies and their ``.pxd`` under ``build``; (extension name, source) pairs."""
    out = build / "harbor_router" / "_compiled"
    out.mkdir(parents=True, exist_ok=True)
    (build / "harbor_router" / "__init__.py").write_text("")
    (out / "__init__.py").write_text("")
    (root / "harbor_router" / "_compiled").mkdir(exist_ok=True)  # where --inplace puts them
    for name in DECLARED_IN.values():  # cimported by their run-time name
        _write(build / "harbor_router" / f"{name}.pxd", (root / "_speedups" / f"{name}.pxd"))
    pairs = []
    sources = {m: (root / "harbor_router" / f"{m}.py").read_text() for m in MODULES}
    every = data_plane_classes(sources)
    for module, classes in MODULES.items():
        source = sources[module]
        target = out / f"{module}.py"
        _write(target, _strip_bases(source, classes))
        text = _pxd(source, module, classes, every)
        # the module's own declarations, and the same under its run-time name for cimports
        for pxd in (out / f"{module}.pxd", build / "harbor_router" / f"{module}.pxd"):
            _write(pxd, text)
        pairs.append((f"harbor_router._compiled.{module}", str(target.relative_to(root))))
    return pairs
