"""``make demo``: pull two images through harbor-router, end to end, on this machine.

It starts a real registry (Debian's ``docker-registry``) holding a few images, the Harbor
emulator in front of it (proxy-cache projects ``dockerhub``, ``ghcr``, ``quay`` among 120 normal
ones), and the router as a user would run it: ``python -m harbor_router`` with ``HARBOR_URL`` and
the robot account, everything else at its defaults. Then ``skopeo`` pulls
``proxy/library/nginx:1.25`` and ``proxy/acme/tool:v1`` through the router, and the demo shows
which project served each image and that the digest is the one in the registry.

Exit status 0 when every pull succeeded with the right digest; 1 with a message otherwise.
Work files and logs are under ``.demo/`` (removed at the next run).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from email.message import Message
from pathlib import Path

from distribution import DistributionRegistry
from harbor_emulator import HarborEmulator, default_projects
from oci_images import build_image, push, skopeo_env
from support_tools import free_port

ROOT = Path(__file__).resolve().parent.parent
WORKDIR = ROOT / ".demo"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
PULL_TIMEOUT = 60.0
TOKEN = "demo"  # AUTH_MODE=header only checks that the client sent credentials

# (project in Harbor, repository as the client pulls it, tag, Docker schema2?, random bytes)
IMAGES = (
    ("dockerhub", "library/nginx", "1.25", True, 256 * 1024),
    ("ghcr", "acme/tool", "v1", False, 0),
)
# Also stored, so that the router has to pick the right project among several.
DISTRACTORS = (
    ("dockerhub", "library/alpine", "3.19", False, 0),
    ("quay", "coreos/etcd", "v3.5", False, 0),
)
ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


class DemoError(Exception):
    pass


def say(text: str = "") -> None:
    print(text, flush=True)


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise DemoError(f"{tool!r} is not installed: run `make system-deps` as root")
    return path


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def pick_port(variable: str, default: int) -> str:
    if port_is_free(default):
        return f":{default}"
    port = free_port()
    say(f"   port {default} (default {variable}) is taken: using {variable}=127.0.0.1:{port}")
    return f"127.0.0.1:{port}"


def http_get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5.0) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@contextmanager
def router_process(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harbor_router"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                say("  the router did not stop on SIGTERM in time: killing it")
                proc.kill()
                proc.wait(STOP_TIMEOUT)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the router exited with status {proc.returncode}:\n{tail(log_path)}")
        try:
            status, _, body = http_get(url + "/readyz")
            if status == 200:
                return body.decode(errors="replace").strip()
            last = f"{status} {body[:200]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise DemoError(f"/readyz not 200 after {READY_TIMEOUT:.0f}s ({last}):\n{tail(log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def registry_digest(registry_url: str, stored_repo: str, tag: str) -> str:
    status, headers, _ = http_get(
        f"{registry_url}/v2/{stored_repo}/manifests/{tag}", {"Accept": ACCEPT}, method="HEAD"
    )
    if status != 200:
        raise DemoError(f"the registry answered {status} for {stored_repo}:{tag}")
    return str(headers["Docker-Content-Digest"])


def pull(skopeo: str, router_address: str, repo: str, tag: str, dest: Path) -> str:
    workdir = WORKDIR / "skopeo"
    workdir.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digestfile = workdir / f"digest-{repo.replace('/', '_')}-{tag}"
    cmd = [
        skopeo,
        "--insecure-policy",
        "copy",
        "--retry-times=0",
        "--src-tls-verify=false",
        f"--src-registry-token={TOKEN}",
        f"--digestfile={digestfile}",
        f"docker://{router_address}/proxy/{repo}:{tag}",
        f"dir:{dest}",
    ]
    say(
        f"  $ skopeo copy docker://{router_address}/proxy/{repo}:{tag} dir:{dest.relative_to(ROOT)}"
    )
    started = time.monotonic()
    try:
        result = subprocess.run(
            cmd,
            env=skopeo_env(workdir),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PULL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DemoError(f"skopeo copy did not finish in {PULL_TIMEOUT:.0f}s") from None
    if result.returncode != 0:
        raise DemoError(
            f"skopeo copy failed ({result.returncode}):\n{result.stderr.decode(errors='replace')}"
        )
    manifest = (dest / "manifest.json").read_bytes()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    reported = digestfile.read_text().strip()
    if reported != digest:
        raise DemoError(f"skopeo reported {reported}, the copied manifest is {digest}")
    blobs = [p for p in dest.iterdir() if p.name not in ("manifest.json", "version")]
    size = sum(p.stat().st_size for p in blobs)
    say(
        f"    pulled in {time.monotonic() - started:.2f}s: manifest + {len(blobs)} blobs, "
        f"{size} bytes"
    )
    return digest


def serving_project(harbor: HarborEmulator, repo: str, tag: str) -> tuple[str, list[str]]:
    """The project that answered 200 for the manifest, and the projects the router asked."""
    asked = []
    blob_projects = set()
    for record in harbor.requests():
        if record.project is None:
            continue
        path = record.path.removeprefix(f"/v2/{record.project}/")
        if path == f"{repo}/manifests/{tag}" and record.project not in asked:
            asked.append(record.project)
        elif path.startswith(f"{repo}/blobs/"):
            blob_projects.add(record.project)
    if not asked:
        raise DemoError(f"the emulator saw no manifest request for {repo}:{tag}")
    # The emulator's log has no statuses: ask each project the router asked, as the router did.
    found = []
    for project in asked:
        status, _, _ = http_get(
            f"{harbor.url}/v2/{project}/{repo}/manifests/{tag}",
            {"Accept": ACCEPT, "Authorization": harbor.basic_auth_header()},
            method="HEAD",
        )
        if status == 200:
            found.append(project)
    if len(found) != 1:
        raise DemoError(f"expected one project to hold {repo}:{tag}, found {found or 'none'}")
    if blob_projects != {found[0]}:
        raise DemoError(
            f"blobs of {repo} were fetched from {sorted(blob_projects)}, expected only {found[0]}"
        )
    return found[0], asked


def router_env(harbor: HarborEmulator, listen: str, metrics: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(WORKDIR)),
        "HARBOR_URL": harbor.url,
        "HARBOR_USERNAME": harbor.username,
        "HARBOR_PASSWORD": harbor.password,
    }
    if listen != ":8080":
        env["LISTEN_ADDR"] = listen
    if metrics != ":9090":
        env["METRICS_ADDR"] = metrics
    for name in ("HARBOR_ROUTER_NO_EXTENSIONS", "HARBOR_ROUTER_REQUIRE_EXTENSIONS", "LANG"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def demo() -> None:
    started = time.monotonic()
    registry_binary = require("docker-registry")
    skopeo = require("skopeo")
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir()

    with ExitStack() as stack:
        say("1. registry: docker-registry with the images Harbor's proxy caches would hold")
        registry = stack.enter_context(DistributionRegistry(WORKDIR / "registry", registry_binary))
        pushed: dict[tuple[str, str], str] = {}
        for project, repo, tag, schema2, random_bytes in IMAGES + DISTRACTORS:
            stored = f"{project}/{repo}"
            layout = WORKDIR / "images" / stored.replace("/", "_") / tag
            build_image(layout, stored, tag, docker_schema2=schema2, random_bytes=random_bytes)
            digest = push(
                layout, tag, registry.url, stored, workdir=WORKDIR / "skopeo", skopeo=skopeo
            )
            pushed[(project, repo)] = digest
            say(f"   pushed {stored}:{tag} {digest}")
        say(f"   at {registry.url}")

        say("2. Harbor: the emulator in front of the registry")
        harbor = stack.enter_context(HarborEmulator(registry.url, default_projects()))
        proxies = ", ".join(p.name for p in harbor.proxy_projects if p.name != "proxy")
        say(
            f"   at {harbor.url}: {len(harbor.projects)} projects, proxy caches: {proxies} "
            "(and one named `proxy`, the router's own prefix, which it never asks)"
        )

        say("3. router: python -m harbor_router")
        listen = pick_port("LISTEN_ADDR", 8080)
        metrics = pick_port("METRICS_ADDR", 9090)
        env = router_env(harbor, listen, metrics)
        shown = " ".join(
            f"{k}={'****' if k == 'HARBOR_PASSWORD' else repr(v) if '$' in v else v}"
            for k, v in env.items()
            if k not in ("PATH", "HOME", "LANG")
        )
        say(f"   $ {shown} python -m harbor_router")
        log_path = WORKDIR / "router.log"
        proc = stack.enter_context(router_process(env, log_path))
        port = int(listen.rsplit(":", 1)[1])
        address = f"127.0.0.1:{port}"
        ready = wait_ready(proc, f"http://{address}", log_path)
        say(f"   ready on {address}: /readyz {ready}")
        for line in log_path.read_text(errors="replace").splitlines():
            if "listening on" in line:
                say(f"   log: {line.split(': ', 1)[-1]}")
        say(
            f"   AUTH_MODE=header (the default): skopeo sends a token ({TOKEN!r}); the router "
            "talks to Harbor as its robot"
        )

        say("4. pulls through the router")
        results = []
        for project, repo, tag, _, _ in IMAGES:
            dest = WORKDIR / "pulled" / repo.replace("/", "_")
            digest = pull(skopeo, address, repo, tag, dest)
            served_by, asked = serving_project(harbor, repo, tag)
            in_registry = registry_digest(registry.url, f"{served_by}/{repo}", tag)
            if served_by != project:
                raise DemoError(f"{repo}:{tag} was served by {served_by}, it lives in {project}")
            if digest != in_registry or digest != pushed[(project, repo)]:
                raise DemoError(f"{repo}:{tag}: pulled {digest}, the registry holds {in_registry}")
            results.append((f"proxy/{repo}:{tag}", served_by, digest))
            say(f"    image:    proxy/{repo}:{tag}")
            say(f"    asked:    {', '.join(asked)}")
            say(f"    served by project: {served_by}")
            say(f"    digest:   {digest}")
            say(f"    registry: {in_registry} (equal)")

        say("5. shutting down")
        stack.close()
        if proc.returncode not in (0, -signal.SIGTERM):
            raise DemoError(f"the router exited with status {proc.returncode}:\n{tail(log_path)}")
        say(f"   router stopped (status {proc.returncode}), Harbor emulator and registry stopped")

    say()
    for image, project, digest in results:
        say(f"OK  {image:<28} served by {project:<10} {digest}")
    say(
        f"demo finished in {time.monotonic() - started:.1f}s (logs in {WORKDIR.relative_to(ROOT)}/)"
    )


def main() -> int:
    try:
        demo()
    except DemoError as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"\ndemo FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
