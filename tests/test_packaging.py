"""The wheel, the sdist and the container image's build steps (issue 9).

Builds from the repository the way a release (and docker/Dockerfile) does: an sdist, then the
wheel from that sdist, with the compiled speedups required; then installs the wheel into a fresh
virtual environment exactly as the image's runtime stage does (``pip install --no-index
--find-links``) and runs it from outside the source tree. Slow (a C compile, a venv, a download
of the dependency wheels from PyPI), so it runs once per module and is bounded by a timeout.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"

pytestmark = pytest.mark.timeout(300)  # a wheel build compiles the whole data plane


def _version() -> str:
    tree = ast.parse((ROOT / "harbor_router" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    raise AssertionError("no __version__ in harbor_router/__init__.py")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARBOR_")}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def _attempt(args: list[str | pathlib.Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (``env`` defaults to :func:`_clean_env`), whatever its status."""
    kwargs.setdefault("env", _clean_env())
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
        **kwargs,  # type: ignore[arg-type]
    )


def _run(args: list[str | pathlib.Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """:func:`_attempt`, which must succeed."""
    result = _attempt(args, **kwargs)
    assert result.returncode == 0, f"{args}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _pip_install(python: pathlib.Path, *args: str | pathlib.Path) -> None:
    """``pip install -q --no-index`` into the environment of ``python``: nothing downloaded."""
    _run([python, "-m", "pip", "install", "-q", "--no-index", *args])


def _load(path: pathlib.Path) -> Any:
    """A module from a file outside the package (``_speedups/``, ``docker/``)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _require_build() -> None:
    """``build`` is in the test extras; without it skip locally, fail in CI."""
    try:
        import build  # noqa: F401
    except ImportError:
        reason = "the 'build' package is not installed (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def _build(args: list[str | pathlib.Path], **env: str) -> None:
    _require_build()
    # --no-isolation: the venv's setuptools, Cython and wheel, no download; -x: the venv's
    # setuptools may be older than build-system.requires asks for an isolated build.
    _run([sys.executable, "-m", "build", "--no-isolation", "-x", *args], env=_clean_env(**env))


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """sdist + the wheel built from it (``python -m build``'s default path), extensions required."""
    out = tmp_path_factory.mktemp("dist")
    _build(["--outdir", out, ROOT], HARBOR_ROUTER_REQUIRE_EXTENSIONS="1")
    return out


def _one(directory: pathlib.Path, pattern: str) -> pathlib.Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def test_version_has_one_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "harbor_router.__version__"}


def test_sdist_carries_the_cython_sources_not_build_leftovers(dist: pathlib.Path) -> None:
    sdist = _one(dist, f"harbor[-_]router-{_version()}.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    expected_pyx = {f"_speedups/{p.name}" for p in (ROOT / "_speedups").glob("*.pyx")}
    assert expected_pyx and expected_pyx <= names
    assert "_speedups/dataplane.py" in names
    modules = {f"harbor_router/{p.name}" for p in (ROOT / "harbor_router").glob("*.py")}
    assert modules <= names, modules - names
    assert {"setup.py", "pyproject.toml", "README.md", "harbor_router/py.typed"} <= names
    leftovers = [n for n in names if n.endswith((".c", ".so", ".html", ".pyc"))]
    assert leftovers == []
    assert not any(n.startswith("tests/") for n in names)


def _dataplane_modules() -> list[str]:
    return list(_load(ROOT / "_speedups" / "dataplane.py").MODULES)


def test_wheel_is_a_platform_wheel_with_the_speedups(dist: pathlib.Path) -> None:
    wheel = _one(dist, f"harbor_router-{_version()}-cp3*-linux_*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = Parser().parsestr(
            zf.read(f"harbor_router-{_version()}.dist-info/METADATA").decode()
        )
    assert metadata["Version"] == _version()
    assert metadata["Name"] == "harbor-router"
    so = sorted(n for n in names if n.endswith(".so"))
    compiled = {
        n.split("/")[-1].split(".")[0] for n in so if n.startswith("harbor_router/_compiled/")
    }
    assert compiled == set(_dataplane_modules()), so
    assert len(so) == 2 + len(compiled), so
    assert any(n.startswith("harbor_router/_cache_c.") for n in so)
    assert any(n.startswith("harbor_router/_wire_c.") for n in so)
    assert "harbor_router/py.typed" in names
    modules = {f"harbor_router/{p.name}" for p in (ROOT / "harbor_router").glob("*.py")}
    assert modules <= names, modules - names
    leftovers = [n for n in names if n.endswith((".c", ".pyx", ".html", ".pyc", ".o"))]
    assert leftovers == []
    assert {n.split("/")[0] for n in names} == {
        "harbor_router",
        f"harbor_router-{_version()}.dist-info",
    }


@pytest.fixture(scope="module")
def installed(
    dist: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pathlib.Path]:
    """A fresh venv (no system site-packages) with the wheel installed as the image installs it:
    ``pip wheel`` collects the dependency wheels (from PyPI), ``pip install --no-index``."""
    base = tmp_path_factory.mktemp("install")
    wheels = base / "wheels"
    wheel = _one(dist, "harbor_router-*-cp3*-linux_*.whl")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", wheels, wheel])
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    _pip_install(env_dir / "bin" / "python", "--find-links", wheels, "harbor-router")
    yield env_dir


def test_installed_wheel_runs_check_config(installed: pathlib.Path, tmp_path: pathlib.Path) -> None:
    env = _clean_env(HARBOR_URL="https://harbor.example.com", HARBOR_ROUTER_REQUIRE_EXTENSIONS="1")
    result = _run([installed / "bin" / "harbor-router", "--check-config"], env=env, cwd=tmp_path)
    assert "HARBOR_URL=https://harbor.example.com" in result.stdout
    version = _run([installed / "bin" / "harbor-router", "--version"], env=env, cwd=tmp_path)
    assert version.stdout.strip() == f"harbor-router {_version()}"
    bad = _attempt([installed / "bin" / "harbor-router", "--check-config"], cwd=tmp_path)
    assert bad.returncode == 2 and "HARBOR_URL" in bad.stderr


def test_installed_wheel_loads_the_compiled_modules(
    installed: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    code = (
        "import pathlib, sys, harbor_router._cache as c, harbor_router._wire as w, "
        "harbor_router._cache_c as cc, harbor_router._wire_c as wc\n"
        "assert c.IMPLEMENTATION == 'c' and w.IMPLEMENTATION == 'c'\n"
        "print(pathlib.Path(cc.__file__).resolve()); print(pathlib.Path(wc.__file__).resolve())\n"
    )
    env = _clean_env(HARBOR_ROUTER_REQUIRE_EXTENSIONS="1")
    result = _run([installed / "bin" / "python", "-c", code], env=env, cwd=tmp_path)
    paths = [pathlib.Path(line) for line in result.stdout.split()]
    assert len(paths) == 2
    for path in paths:
        assert path.is_relative_to(installed.resolve()), path
        assert not path.is_relative_to(ROOT), path
    # The image's and cibuildwheel's smoke test agrees.
    smoke = _run([installed / "bin" / "python", DOCKER / "smoke.py"], env=env, cwd=tmp_path)
    assert "speedups c" in smoke.stdout


def test_sdist_builds_a_pure_wheel_without_a_compiler(
    dist: pathlib.Path, installed: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    sdist = _one(dist, "harbor[-_]router-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "src", filter="data")
    source = _one(tmp_path / "src", "harbor[-_]router-*")
    out = tmp_path / "pure"
    # CC=false: any attempt to compile would fail the build.
    _build(["--wheel", "--outdir", out, source], HARBOR_ROUTER_NO_EXTENSIONS="1", CC="false")
    wheel = _one(out, f"harbor_router-{_version()}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert not [n for n in names if n.endswith((".so", ".c", ".pyx"))]
    python = installed / "bin" / "python"
    _pip_install(python, "--no-deps", "--force-reinstall", wheel)
    try:
        smoke = _run([python, DOCKER / "smoke.py", "--pure"], env=_clean_env(), cwd=tmp_path)
        assert "speedups py" in smoke.stdout
        required = _attempt(
            [python, "-c", "import harbor_router._cache"],
            env=_clean_env(HARBOR_ROUTER_REQUIRE_EXTENSIONS="1"),
            cwd=tmp_path,
        )
        assert required.returncode != 0 and "_compiled is missing" in required.stderr
    finally:
        platform = _one(dist, "harbor_router-*-cp3*-linux_*.whl")
        _pip_install(python, "--no-deps", "--force-reinstall", platform)


# -- the image: docker/entrypoint.py (WORKERS from the CPU quota) and docker/Dockerfile ---------


@pytest.fixture
def entrypoint() -> Any:
    """``docker/entrypoint.py``, loaded afresh for each test (they patch its globals)."""
    return _load(DOCKER / "entrypoint.py")


@pytest.mark.parametrize(
    ("files", "cpus", "workers"),
    [
        ({"cpu.max": "200000 100000\n"}, 8, 2),
        ({"cpu.max": "150000 100000\n"}, 8, 1),  # 1.5 CPUs: one unthrottled worker
        ({"cpu.max": "50000 100000\n"}, 8, 1),  # at least one
        ({"cpu.max": "400000 100000\n"}, 2, 2),  # never more than the CPUs we may run on
        ({"cpu.max": "max 100000\n"}, 3, 3),  # no quota: the CPUs
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 8, 3),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 4, 4),
        ({}, 5, 5),
    ],
)
def test_entrypoint_workers_follow_the_cgroup_cpu_limit(
    entrypoint: Any,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    cpus: int,
    workers: int,
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(entrypoint, "available_cpus", lambda: cpus)
    assert entrypoint.default_workers(tmp_path) == workers


def test_entrypoint_keeps_workers_from_the_environment(
    entrypoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(entrypoint.os, "execvp", lambda f, a: calls.append((f, a)))
    monkeypatch.setattr(entrypoint, "default_workers", lambda: 7)
    monkeypatch.setenv("WORKERS", "3")
    entrypoint.main(["--check-config"])
    assert calls == [("harbor-router", ["harbor-router", "--check-config"])]
    assert os.environ["WORKERS"] == "3"
    monkeypatch.delenv("WORKERS")
    entrypoint.main([])
    assert os.environ["WORKERS"] == "7"


def test_entrypoint_healthcheck_asks_healthz(
    entrypoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    class Answer:
        status = 200

        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    def urlopen(url: str, timeout: float) -> Answer:
        seen.append(url)
        if url.endswith(":9999/healthz"):
            raise OSError("refused")
        return Answer()

    monkeypatch.setattr(entrypoint.urllib.request, "urlopen", urlopen)
    assert entrypoint.healthcheck({}) == 0
    assert entrypoint.healthcheck({"LISTEN_ADDR": "[::]:8081"}) == 0
    assert entrypoint.healthcheck({"LISTEN_ADDR": ":9999"}) == 1
    assert seen == [
        "http://127.0.0.1:8080/healthz",
        "http://127.0.0.1:8081/healthz",
        "http://127.0.0.1:9999/healthz",
    ]


def test_dockerfile_runtime_stage_is_small_and_unprivileged() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    stages = text.split("\nFROM ")[1:]
    assert len(stages) == 2
    build, runtime = stages
    assert "HARBOR_ROUTER_REQUIRE_EXTENSIONS=1" in build and "gcc" in build
    assert "apt-get" not in runtime and "gcc" not in runtime
    assert "\nUSER 10001:10001" in runtime
    assert "\nEXPOSE 8080 9090" in runtime
    assert "--healthcheck" in runtime.split("HEALTHCHECK", 1)[1].split("\n\n")[0]
    assert "harbor-router-entrypoint" in runtime.split("\nENTRYPOINT", 1)[1]
    assert "python /tmp/smoke.py" in runtime
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            source = line.split()[1]
            if source != ".":
                assert source in allowed and (ROOT / source).exists(), source
    for needed in (
        "pyproject.toml",
        "setup.py",
        "MANIFEST.in",
        "README.md",
        "harbor_router",
        "_speedups",
    ):
        assert needed in allowed, needed
