"""The compiled data plane (``_speedups/dataplane.py``): what is compiled, and that it is used.

The suite itself runs twice in CI, once on the compiled modules (``make test``) and once on their
source (``make test-py``); these tests check which of the two a run is on, and the generator of
the declarations the compiled modules are built with.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pathlib
from types import ModuleType

import pytest

import harbor_router

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dataplane", ROOT / "_speedups" / "dataplane.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DATAPLANE = _generator()


def declared(
    source: str,
    module: str,
    classes: tuple[str, ...],
    elsewhere: dict[str, ast.ClassDef] | None = None,
) -> list[str]:
    """The lines of the declarations the generator writes for ``source``, stripped."""
    pxd = DATAPLANE._pxd(source, module, classes, elsewhere)
    return [line.strip() for line in pxd.splitlines()]


def test_compiled_data_plane_loaded_when_required() -> None:
    if os.environ.get("HARBOR_ROUTER_REQUIRE_EXTENSIONS", "") in ("", "0"):
        pytest.skip("HARBOR_ROUTER_REQUIRE_EXTENSIONS is not set")
    assert harbor_router.DATAPLANE == "c"
    for name, classes in DATAPLANE.MODULES.items():
        module = importlib.import_module(f"harbor_router.{name}")
        origin = pathlib.Path(module.__file__ or "")
        assert origin.parent.name == "_compiled" and origin.suffix == ".so", origin
        for cls in classes:
            assert getattr(module, cls).__module__ == f"harbor_router._compiled.{name}"


def test_compiled_data_plane_is_built_from_the_current_source() -> None:
    """A source edited after the build would otherwise be tested only as its twin."""
    if harbor_router.DATAPLANE != "c":
        pytest.skip("the data plane is not compiled in this run")
    built = ROOT / "build" / "dataplane" / "harbor_router" / "_compiled"
    if not built.is_dir():
        pytest.skip("compiled elsewhere (an installed wheel): no build tree to compare")
    for name, classes in DATAPLANE.MODULES.items():
        source = (ROOT / "harbor_router" / f"{name}.py").read_text()
        copy = (built / f"{name}.py").read_text()
        assert copy == DATAPLANE._strip_bases(source, classes), f"{name}.py changed: make install"


def test_source_used_without_extensions() -> None:
    if os.environ.get("HARBOR_ROUTER_NO_EXTENSIONS", "") in ("", "0"):
        pytest.skip("HARBOR_ROUTER_NO_EXTENSIONS is not set")
    assert harbor_router.DATAPLANE == "py"
    for name in DATAPLANE.MODULES:
        module = importlib.import_module(f"harbor_router.{name}")
        assert pathlib.Path(module.__file__ or "").parent == ROOT / "harbor_router"


@pytest.mark.parametrize("name", sorted(DATAPLANE.MODULES))
def test_every_attribute_a_class_sets_is_declared(name: str) -> None:
    """An extension type has no __dict__: an attribute missing from the .pxd would be an
    AttributeError only on the compiled build, at the first line that sets it."""
    sources = {m: (ROOT / "harbor_router" / f"{m}.py").read_text() for m in DATAPLANE.MODULES}
    source = sources[name]
    pxd = DATAPLANE._pxd(source, name, DATAPLANE.MODULES[name], _classes(sources))
    declared: dict[str, set[str]] = {}
    bases: dict[str, str] = {}
    current = ""
    for line in pxd.splitlines():
        if line.startswith("cdef class "):
            current, _, base = (
                line.removeprefix("cdef class ").rstrip(":").rstrip(")").partition("(")
            )
            declared[current] = set()
            if base:
                bases[current] = base
        elif line.startswith("    cdef public "):
            declared[current].add(line.split()[-1])
    assert set(declared) == set(DATAPLANE.MODULES[name])
    classes = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}
    for cls_name, attributes in declared.items():
        assigned = {
            node.attr
            for node in ast.walk(classes[cls_name])
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and isinstance(node.ctx, ast.Store)
        }
        base = bases.get(cls_name)
        while base is not None:  # what a base declares is the subclass's too
            attributes = attributes | set(DATAPLANE._attributes(_classes(sources)[base]))
            base = DATAPLANE._known_base(_classes(sources)[base])
        assert assigned <= attributes, (cls_name, assigned - attributes)


def _classes(sources: dict[str, str]) -> dict[str, ast.ClassDef]:
    return DATAPLANE.data_plane_classes(sources)


def test_generator_drops_only_the_asyncio_protocol_base() -> None:
    source = "class A(asyncio.Protocol):\n    pass\nclass B(Base):\n    pass\n"
    out = DATAPLANE._strip_bases(source, ("A", "B"))
    assert "class A:\n" in out and "class B(Base):" in out


GENERATOR_SOURCE = """
class Relay:
    def __init__(self, client: HttpProtocol, rewriter: Rewriter | None, other: object) -> None:
        self._client = client
        self._rewriter = rewriter
        self._other = other
        self._watch: HeadDeadlines | None = None
        self._mixed = client
        self.count = 0
        self._table: dict[str, int] = {}
        self._items = [0] * 3
        self._loose = []

    def later(self, relay: Relay, keep: list[int]) -> None:
        self._mixed = relay
        self._loose = keep

    def plain(self, client: HttpProtocol, n, m=1) -> Relay | None:
        return None

    def keyword(self, *, n: int) -> None: ...

    def closure(self) -> None:
        callback = lambda: None

    async def waits(self) -> None: ...

    @property
    def prop(self) -> int:
        return 1
"""


def test_generator_types_attributes_and_declares_c_methods() -> None:
    """Attributes the source gives one data plane class are typed with it (cimported from
    the module it lives in, by its run-time name); plain methods are C-callable with their
    class-typed parameters; keyword-only, closure-making, async and decorated ones stay
    Python methods."""
    lines = set(declared(GENERATOR_SOURCE, "relay", ("Relay",)))
    assert "from harbor_router.protocol cimport HttpProtocol" in lines
    assert "from harbor_router.headers cimport Rewriter" in lines
    assert "cdef public HttpProtocol _client" in lines
    assert "cdef public Rewriter _rewriter" in lines
    assert "cdef public HeadDeadlines _watch" in lines  # same module: no cimport
    assert not any("cimport HeadDeadlines" in line for line in lines)
    assert {"cdef public object _other", "cdef public object _mixed",
            "cdef public object count"} <= lines  # fmt: skip
    assert {"cdef public dict _table", "cdef public list _items",
            "cdef public object _loose"} <= lines  # builtin containers only when sure  # fmt: skip
    assert "cpdef later(self, Relay relay, keep)" in lines
    assert "cpdef Relay plain(self, HttpProtocol client, n, m=*)" in lines
    assert not any(name in line for line in lines for name in ("keyword", "closure", "waits",
                                                              "prop"))  # fmt: skip


INHERITING_SOURCE = """
class Relay(Sink):
    def __init__(self) -> None:
        self.seen = 0
        self.own = 1

    def on_body(self, data: bytes) -> None: ...

class Tail(upstream.Sink):
    pass
"""


def test_generator_declares_a_data_plane_base_and_what_it_leaves_to_it() -> None:
    """A class extending another data plane class is declared with it as its base (cimported
    by its run-time name), does not declare again what the base does, and overrides its
    C methods."""
    base = ast.parse("class Sink:\n    def __init__(self) -> None:\n        self.seen = 0\n")
    elsewhere = {"Sink": base.body[0]}
    assert isinstance(elsewhere["Sink"], ast.ClassDef)
    lines = declared(INHERITING_SOURCE, "relay", ("Relay",), elsewhere)
    assert "from harbor_router.upstream cimport Sink" in lines
    assert "cdef class Relay(Sink):" in lines
    assert "cdef public object own" in lines and "cdef public object seen" not in lines
    assert "cpdef on_body(self, data)" in lines
    tail = DATAPLANE._pxd(INHERITING_SOURCE, "relay", ("Tail",), elsewhere)
    assert "cdef class Tail(Sink):" in tail.splitlines()
    with pytest.raises(SystemExit, match="base Sink not found"):
        DATAPLANE._pxd(INHERITING_SOURCE, "relay", ("Relay",))


SCALAR_SOURCE = """
class Conn:
    def later(self, quick: bool) -> bool:
        self.maybe = None
        self.quick = quick
        return True

    def __init__(self, flag: bool) -> None:
        self.closed = False
        self.given = flag
        self.told: bool = flag and 1
        self.maybe = None
        self.count = 0
        self.since = 0.0
        self.one = self.two = True
        self.pair, self.other = True, False
"""


def test_generator_makes_bool_attributes_parameters_and_returns_c_values() -> None:
    """What mypy holds to ``bool`` (the first assignment, ``__init__`` first, or an
    annotation) is a C ``bint``; anything first assigned otherwise stays an object, and so
    do ints and floats (boxing them for Python callers cost more than it saved)."""
    lines = set(declared(SCALAR_SOURCE, "upstream", ("Conn",)))
    bints = {"closed", "given", "told", "one", "two", "quick"}
    objects = {"maybe", "count", "since", "pair", "other"}
    assert {f"cdef public bint {name}" for name in bints} <= lines
    assert {f"cdef public object {name}" for name in objects} <= lines
    assert "cpdef bint later(self, bint quick)" in lines


SECONDS_SOURCE = """
class Pool:
    def __init__(self, timeout: float) -> None:
        self.timeout: Seconds = timeout
        self.since = 0.0
        self.given = timeout

    def take(self, now: Seconds, spare: float = 0.0) -> Seconds:
        start: Seconds = now
        self.last = now
        return start
"""


def test_generator_makes_seconds_c_doubles_where_annotated() -> None:
    """``Seconds`` (``_wire``'s alias of float for clock readings) makes an attribute,
    parameter, result or local a C double; a float (a literal, a ``float`` parameter) stays
    an object."""
    lines = declared(SECONDS_SOURCE, "upstream", ("Pool",))
    assert {"cdef public double timeout", "cdef public double last"} <= set(lines)
    assert {"cdef public object since", "cdef public object given"} <= set(lines)
    at = lines.index("cpdef double take(self, double now, spare=*)")
    assert lines[at - 1] == "@cython.locals(start=double)"


STATUS_SOURCE = """
class Relay:
    def setup(self, code: int) -> None:
        self.status: Status = 0
        self.hits: Count = 0
        self.other = 0
        self.given = code

    def relays(self, status: Status, other: int) -> Status:
        seen: Status = status
        return seen
"""


def test_generator_makes_statuses_and_counts_c_ints_where_annotated() -> None:
    """``Status`` (``responses``' alias of int for an HTTP status) makes an attribute,
    parameter, result or local a C int, ``Count`` (``metrics``' alias of int for a counter) a
    C long long; an int (a literal, an ``int`` parameter) stays an object."""
    lines = declared(STATUS_SOURCE, "relay", ("Relay",))
    assert {"cdef public int status", "cdef public long long hits"} <= set(lines)
    assert {"cdef public object other", "cdef public object given"} <= set(lines)
    at = lines.index("cpdef int relays(self, int status, other)")
    assert lines[at - 1] == "@cython.locals(seen=int)"


LOCALS_SOURCE = """
class Pool:
    def take(self) -> None:
        conn: UpstreamConnection = self.idle.pop()
        relay: Relay
        done: bool = conn.closed
        other: int = 0
        relay, _ = self.pair
"""


def test_generator_types_the_locals_a_method_annotates() -> None:
    """A local annotated with a data plane class or bool is declared so
    (``@cython.locals``), its class cimported; other annotations stay the interpreter's."""
    lines = declared(LOCALS_SOURCE, "upstream", ("Pool",))
    assert "import cython" in lines
    assert "from harbor_router.relay cimport Relay" in lines
    at = lines.index("cpdef take(self)")
    assert lines[at - 1] == "@cython.locals(conn=UpstreamConnection, relay=Relay, done=bint)"


def test_generator_declares_listed_functions_and_cimports_them_where_imported() -> None:
    """A function of FUNCTIONS is declared cpdef in its module; a module importing it by name
    cimports it, and its copy's Python import leaves it out on the same lines."""
    responses = "def status_line(status: int) -> bytes:\n    return b''\n"
    assert "cpdef status_line(status)" in DATAPLANE._pxd(responses, "responses", ())
    user = (
        "from .responses import (\n    other,\n    status_line,\n)\n"
        "if x:\n    from .responses import status_line\n"
    )
    assert "from harbor_router.responses cimport status_line" in DATAPLANE._pxd(user, "relay", ())
    copy = DATAPLANE._strip_bases(user, ())
    assert copy == "from harbor_router.responses import other\n\n\n\nif x:\n    pass\n"
    with pytest.raises(SystemExit, match="not a plain function"):
        DATAPLANE._pxd("status_line = None\n", "responses", ())


def test_the_wire_functions_it_cimports_are_declared_as_the_pyx_defines_them() -> None:
    """A module importing a function of ``_wire`` cimports it from ``_wire_c`` by the
    hand-written declarations (_speedups/_wire_c.pxd): each is one of FUNCTIONS, and the
    .pyx defines it cpdef with the same parameters."""
    pxd = (ROOT / "_speedups" / "_wire_c.pxd").read_text()
    pyx = (ROOT / "_speedups" / "_wire_c.pyx").read_text()
    declared = {
        line.split("(")[0].split()[-1]: line.removeprefix("cpdef ")
        for line in pxd.splitlines()
        if line.startswith("cpdef ")
    }
    assert set(declared) == set(DATAPLANE.FUNCTIONS["_wire"])
    flat = " ".join(pyx.split())  # a definition spread over lines, as one
    for name, signature in declared.items():
        assert f"cpdef {signature}:" in flat, name
    relay = "from ._wire import build_head, head_fields\n"
    assert "from harbor_router._wire_c cimport build_head, head_fields" in DATAPLANE._pxd(
        relay, "relay", ()
    )


def test_generator_spells_relative_imports_with_the_package() -> None:
    out = DATAPLANE._strip_bases("from . import errors\nif x:\n    from .relay import Relay\n", ())
    assert (
        out
        == "from harbor_router import errors\nif x:\n    from harbor_router.relay import Relay\n"
    )


def test_generator_types_attributes_with_a_hand_declared_type_and_cimports_it() -> None:
    """A type of TYPES imported by name is cimported from its compiled twin (its copy's
    Python import leaves it out), and an attribute annotated with it, subscripted or not, or
    assigned one made by its constructor, is declared as it, so that its cpdef methods are C
    calls; an attribute the source says nothing of stays an object."""
    source = (
        "from ._cache import Memo, TTLCache\n"
        "class MappingCache:\n"
        "    def __init__(self) -> None:\n"
        "        self._lru: TTLCache[tuple[str, float]] = TTLCache(1, 1.0)\n"
        "        self._known: Memo[int] | None = None\n"
        "        self._other = TTLCache(1, 1.0)\n"
        "        self._given = make()\n"
    )
    lines = set(declared(source, "mapping", ("MappingCache",)))
    assert "from harbor_router._cache_c cimport Memo, TTLCache" in lines
    assert {"cdef public TTLCache _lru", "cdef public Memo _known", "cdef public TTLCache _other",
            "cdef public object _given"} <= lines  # fmt: skip
    assert DATAPLANE._strip_bases(source, ("MappingCache",)).startswith("pass\n")


def test_the_cache_methods_it_calls_in_c_are_declared_as_the_pyx_defines_them() -> None:
    """The compiled modules cimport ``_cache_c``'s types by the hand-written declarations
    (_speedups/_cache_c.pxd): each type is one of TYPES, and every method declared there is
    defined in the .pyx with the same signature."""
    pxd = (ROOT / "_speedups" / "_cache_c.pxd").read_text().splitlines()
    pyx = " ".join((ROOT / "_speedups" / "_cache_c.pyx").read_text().split())
    types = {line.split()[2].rstrip(":") for line in pxd if line.startswith("cdef class")}
    assert types == set(DATAPLANE.TYPES["_cache"])
    methods = [line.strip() for line in pxd
               if line.startswith(("    cdef ", "    cpdef ")) and "(" in line]  # fmt: skip
    assert "cpdef get_timed(self, key)" in methods and "cpdef get(self, key)" in methods
    for method in methods:
        assert f"{method}:" in pyx, method


def test_generator_types_what_holds_a_wire_type_and_cimports_it() -> None:
    """A class of TYPES (an extension type of ``_wire_c``) a data plane class holds is typed
    like a data plane class: cimported from ``_wire_c`` with the module's functions, and left
    out of the copy's Python import on the same line."""
    source = (
        "from ._wire import ResponseScan, scan_response\n"
        "class Conn:\n"
        "    def __init__(self) -> None:\n"
        "        self._scan = ResponseScan()\n"
        "    def take(self, scan: ResponseScan) -> None:\n"
        "        other: ResponseScan = scan\n"
    )
    lines = declared(source, "upstream", ("Conn",))
    assert "from harbor_router._wire_c cimport ResponseScan, scan_response" in lines
    assert not any(line.startswith("from harbor_router._wire cimport") for line in lines)
    assert "cdef public ResponseScan _scan" in lines
    assert "cpdef take(self, ResponseScan scan)" in lines
    assert "@cython.locals(other=ResponseScan)" in lines
    copy = DATAPLANE._strip_bases(source, ("Conn",))
    assert copy.splitlines()[0] == "pass"
    assert len(copy.splitlines()) == len(source.splitlines())


def test_generator_gives_the_listed_classes_a_free_list_and_keeps_the_lines() -> None:
    """A class of FREELISTS is decorated in the copy (``@cython.freelist``, in the blank
    lines above it) so that each line stays where the source has it."""
    source = (
        '"""Doc."""\n\nfrom __future__ import annotations\n\nimport x\n\n\n'
        "class Other:\n    pass\n\n\nclass Request:\n    pass\n\n\nclass RequestTwo:\n    pass\n"
    )
    size = DATAPLANE.FREELISTS["Request"]
    copy = DATAPLANE._strip_bases(source, ("Other", "Request", "RequestTwo"))
    lines = copy.splitlines()
    assert len(lines) == len(source.splitlines())
    assert lines[3] == "import cython"
    at = lines.index("class Request:")
    assert at == source.splitlines().index("class Request:")
    assert lines[at - 2 : at] == [f"@cython.freelist({size})", "@cython.cclass"]
    assert lines[lines.index("class RequestTwo:") - 1] == ""
    with pytest.raises(SystemExit, match="free list of Request"):
        DATAPLANE._strip_bases("class Request:\n    pass\n", ("Request",))


def test_a_request_made_after_a_freed_one_has_only_what_it_is_given() -> None:
    """Compiled, the Request made after one was freed is that one (from its free list): it has
    only what it is given, and the defaults."""
    from harbor_router.breaker import Breaker
    from harbor_router.metrics import OTHER_KIND
    from harbor_router.protocol import Request

    first = Request("GET", "/v2/", "a=b", [(b"host", b"h")], True, True, "10.0.0.1")
    first.kind, first.project, first.cache, first.route = 3, "p", "hit", 2
    first.fast_project, first.fast_breaker = object(), Breaker(1, 1.0)
    del first
    second = Request("HEAD", "/", "", [], False, False, "")
    assert (second.method, second.path, second.query, second.headers) == ("HEAD", "/", "", [])
    assert (second.http11, second.keep_alive, second.client_ip, second.error) == (False,) * 2 + (
        "", None)  # fmt: skip
    assert (second.kind, second.project, second.cache) == (OTHER_KIND, "", "")
    assert (second.fast, second.route) == (None, None)
    assert (second.fast_project, second.fast_breaker) == (None, None)
