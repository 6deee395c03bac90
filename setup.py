"""Build the optional compiled speedups from ``_speedups/``.

Every ``_speedups/_<name>_c.pyx`` becomes ``harbor_router._<name>_c``, and the data plane's
modules (``_speedups/dataplane.py``) are compiled from their own source into
``harbor_router/_compiled/``. A failed build is not an error unless
``HARBOR_ROUTER_REQUIRE_EXTENSIONS=1``; ``HARBOR_ROUTER_NO_EXTENSIONS=1`` skips them.
"""

import os
import pathlib
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = pathlib.Path(__file__).parent
NO_EXTENSIONS = os.environ.get("HARBOR_ROUTER_NO_EXTENSIONS", "") not in ("", "0")
REQUIRE_EXTENSIONS = os.environ.get("HARBOR_ROUTER_REQUIRE_EXTENSIONS", "") not in ("", "0")
# every extension: -O3 inlines the scans' per-field helper, among others (-O2: 0.5k more
# instructions per cache hit)
OPTIMIZE = ["-O3"]


def extensions():  # type: ignore[no-untyped-def]
    if NO_EXTENSIONS or sys.implementation.name != "cpython":
        if REQUIRE_EXTENSIONS:
            raise SystemExit("HARBOR_ROUTER_REQUIRE_EXTENSIONS=1 but extensions are disabled")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        print("Cython is not installed: building pure-Python only", file=sys.stderr)
        return []
    sources = sorted(str(p.relative_to(HERE)) for p in (HERE / "_speedups").glob("_*_c.pyx"))
    from setuptools import Extension

    exts = [
        Extension(f"harbor_router.{pathlib.Path(src).stem}", [src], extra_compile_args=OPTIMIZE)
        for src in sources
    ]
    sys.path.insert(0, str(HERE / "_speedups"))
    import dataplane

    plane = [
        Extension(name, [src], extra_compile_args=OPTIMIZE)
        for name, src in dataplane.prepare(HERE, HERE / "build" / "dataplane")
    ]
    directives = {"embedsignature": True}
    threads = os.cpu_count() or 1
    return cythonize(
        exts,
        language_level=3,
        compiler_directives=directives,
        nthreads=threads,
        # a module's own .pxd (_speedups/_wire_c.pxd) is found by the module's full name:
        # prepare() puts a copy at build/dataplane/harbor_router/
        include_path=[str(HERE / "build" / "dataplane")],
    ) + cythonize(
        plane,
        language_level=3,
        compiler_directives={**directives, **dataplane.DIRECTIVES},
        nthreads=threads,
    )


class OptionalBuildExt(build_ext):
    """Keep ``pip install`` working on machines without a compiler."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if REQUIRE_EXTENSIONS:
                raise
            print(f"building extensions failed, using pure Python: {exc}", file=sys.stderr)

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:  # one compiler per CPU (the data plane is 14 modules)
            self.parallel = os.cpu_count() or 1

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRE_EXTENSIONS:
                raise
            print(f"building {ext.name} failed, using pure Python: {exc}", file=sys.stderr)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
