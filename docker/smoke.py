"""Smoke test of an installed harbor-router (a wheel, the image): run it outside the source tree.

Checks that the compiled speedups load from the installed package (with
``HARBOR_ROUTER_REQUIRE_EXTENSIONS=1`` a missing one is an import error, not a silent fallback),
that ``--version`` matches ``__version__`` and that ``--check-config`` accepts a minimal
configuration. ``--pure`` expects the pure-Python twins instead (a ``HARBOR_ROUTER_NO_EXTENSIONS``
build). Used by cibuildwheel's ``test-command``, docker/Dockerfile and tests/test_packaging.py.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys


def main(argv: list[str]) -> int:
    pure = "--pure" in argv
    if pure:
        os.environ.pop("HARBOR_ROUTER_REQUIRE_EXTENSIONS", None)
    else:
        os.environ["HARBOR_ROUTER_REQUIRE_EXTENSIONS"] = "1"
    os.environ.pop("HARBOR_ROUTER_NO_EXTENSIONS", None)

    import harbor_router
    from harbor_router import _cache, _wire

    package = pathlib.Path(harbor_router.__file__).resolve().parent
    expected = "py" if pure else "c"
    for module in (_cache, _wire):
        assert expected == module.IMPLEMENTATION, (module.__name__, module.IMPLEMENTATION)
    compiled = sorted(p.name for p in package.glob("_*_c*.so"))
    assert (compiled == []) == pure, compiled
    assert expected == harbor_router.DATAPLANE, harbor_router.DATAPLANE
    from harbor_router import handler, protocol, upstream

    for module in (protocol, upstream, handler):  # the data plane, compiled or its source
        origin = pathlib.Path(module.__file__ or "").resolve()
        assert origin.parent == (package if pure else package / "_compiled"), origin
        assert origin.suffix == (".py" if pure else ".so"), origin
    if not pure:
        from harbor_router import _cache_c, _wire_c

        for module in (_cache_c, _wire_c):
            origin = pathlib.Path(module.__file__ or "").resolve()
            assert origin.parent == package, origin

    env = {"PATH": os.environ.get("PATH", ""), "HARBOR_URL": "https://harbor.example.com"}
    if not pure:
        env["HARBOR_ROUTER_REQUIRE_EXTENSIONS"] = "1"
    script = pathlib.Path(sys.executable).parent / "harbor-router"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "harbor_router"]
    version = subprocess.run(
        [*command, "--version"], env=env, capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"harbor-router {harbor_router.__version__}", version.stdout
    checked = subprocess.run(
        [*command, "--check-config"], env=env, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
    assert "HARBOR_URL=https://harbor.example.com" in checked.stdout, checked.stdout
    print(f"harbor-router {harbor_router.__version__} ok: speedups {expected}, {package}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
