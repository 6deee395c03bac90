"""The Kubernetes manifests in deploy/: they parse, and their cross-references hold.

Every name a manifest uses to point at another (selectors, ports, Secret keys, kustomize
resources, probe paths, configuration variables) is checked against the thing it points at, so a
rename on one side fails here rather than in a cluster. ``kubectl kustomize`` renders the base and
the overlay when kubectl is installed (required in CI).
"""

from __future__ import annotations

import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from support_tools import require_tool

from harbor_router import __version__
from harbor_router.config import VARIABLES, load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAY = DEPLOY / "overlays" / "redis-sentinel"
NAMES = {v.name for v in VARIABLES}
LABELS = {"app.kubernetes.io/name": "harbor-router", "app.kubernetes.io/component": "router"}

Doc = dict[str, Any]


def _docs(path: pathlib.Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all_yaml() -> list[pathlib.Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if "grafana" not in p.parts)


def _one(path: pathlib.Path, kind: str) -> Doc:
    found = [d for d in _docs(path) if d["kind"] == kind]
    assert len(found) == 1, (path, kind)
    return found[0]


def _deployments() -> Iterator[tuple[pathlib.Path, Doc]]:
    for path in (BASE / "deployment.yaml", DEPLOY / "deployment-vault.yaml"):
        yield path, _one(path, "Deployment")


def _container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Doc = containers[0]
    return container


DEPLOYMENTS = [pytest.param(p, id=p.name) for p, _ in _deployments()]


@pytest.mark.parametrize("path", _all_yaml(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses_with_kind_and_name(path: pathlib.Path) -> None:
    docs = _docs(path)
    assert docs
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], path


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "redis-sentinel"])
def test_kustomization_files_exist(directory: pathlib.Path) -> None:
    kustomization = _one(directory / "kustomization.yaml", "Kustomization")
    listed = kustomization.get("resources", []) + [
        p["path"] for p in kustomization.get("patches", [])
    ]
    assert listed
    for entry in listed:
        assert (directory / entry).exists(), entry
    if directory == BASE:
        in_dir = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
        # Everything but the Secret template is applied by the base.
        assert in_dir - set(listed) == {"secret-robot.template.yaml"}
        assert kustomization["images"][0]["newTag"] == __version__


@pytest.mark.parametrize("path", DEPLOYMENTS)
def test_deployment_pods_are_locked_down(path: pathlib.Path) -> None:
    deployment = _one(path, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"] == LABELS
    assert LABELS.items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    container = _container(deployment)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["image"].endswith(f":{__version__}")
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == LABELS


@pytest.mark.parametrize("path", DEPLOYMENTS)
def test_probes_use_the_router_port_and_health_paths(path: pathlib.Path) -> None:
    container = _container(_one(path, "Deployment"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "metrics": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    config = _one(BASE / "configmap.yaml", "ConfigMap")["data"]
    assert config["LISTEN_ADDR"].endswith(f":{ports['http']}")
    assert config["METRICS_ADDR"].endswith(f":{ports['metrics']}")


def _env_names() -> Iterator[tuple[str, str]]:
    for path in _all_yaml():
        for doc in _docs(path):
            if doc["kind"] == "ConfigMap":
                for name in doc["data"]:
                    yield str(path.relative_to(DEPLOY)), name
            if doc["kind"] == "Deployment":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    for env in container.get("env", []):
                        yield str(path.relative_to(DEPLOY)), env["name"]


def test_every_variable_set_is_a_config_variable() -> None:
    found = list(_env_names())
    assert len(found) > 10
    unknown = [(path, name) for path, name in found if name not in NAMES]
    assert unknown == []
    secrets = [(p, n) for p, n in found if n in ("HARBOR_PASSWORD", "REDIS_PASSWORD")]
    assert secrets == [], "secrets go in files (*_FILE), not in plain variables"


def test_configmaps_load_as_a_valid_config(tmp_path: pathlib.Path) -> None:
    (tmp_path / "user").write_text("robot$harbor-router")
    (tmp_path / "secret").write_text("s3cret")
    files = {"HARBOR_USERNAME_FILE": tmp_path / "user", "HARBOR_PASSWORD_FILE": tmp_path / "secret"}
    base = _one(BASE / "configmap.yaml", "ConfigMap")["data"]
    redis = _one(OVERLAY / "configmap-redis.yaml", "ConfigMap")["data"]
    for data in (base, base | redis):
        environ = {k: str(v) for k, v in data.items()} | {k: str(v) for k, v in files.items()}
        if "REDIS_SENTINELS" in data:
            (tmp_path / "redis").write_text("r3dis")
            environ["REDIS_PASSWORD_FILE"] = str(tmp_path / "redis")
        config = load_config(environ)
        assert config is not None
    assert "WORKERS" not in base  # the entrypoint derives it from the CPU limit


def _mounted_file(container: Doc, pod: Doc, path: str) -> tuple[Doc, str]:
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            return volume, path[len(prefix) :]
    raise AssertionError(f"{path} is on no volume")


def test_credential_files_come_from_the_secret_template() -> None:
    deployment = _one(BASE / "deployment.yaml", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    secret = _one(BASE / "secret-robot.template.yaml", "Secret")
    env = {e["name"]: e["value"] for e in container["env"]}
    for variable in ("HARBOR_USERNAME_FILE", "HARBOR_PASSWORD_FILE"):
        volume, name = _mounted_file(container, pod, env[variable])
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        item = next(i for i in volume["secret"]["items"] if i["path"] == name)
        assert item["key"] in secret["stringData"]
        assert item["key"] == variable.removesuffix("_FILE")
    redis_patch = _one(OVERLAY / "deployment-redis.yaml", "Deployment")
    redis_secret = _one(OVERLAY / "secret-redis.template.yaml", "Secret")
    rpod = redis_patch["spec"]["template"]["spec"]
    rcontainer = _container(redis_patch)
    path = next(e["value"] for e in rcontainer["env"] if e["name"] == "REDIS_PASSWORD_FILE")
    volume, name = _mounted_file(rcontainer, rpod, path)
    assert volume["secret"]["secretName"] == redis_secret["metadata"]["name"]
    assert (
        next(i["key"] for i in volume["secret"]["items"] if i["path"] == name)
        in (redis_secret["stringData"])
    )


def test_vault_deployment_reads_the_files_the_agent_writes() -> None:
    deployment = _one(DEPLOY / "deployment-vault.yaml", "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["vault.hashicorp.com/agent-inject"] == "true"
    env = {e["name"]: e["value"] for e in _container(deployment)["env"]}
    assert set(env) == {"HARBOR_USERNAME_FILE", "HARBOR_PASSWORD_FILE"}
    for path in env.values():
        directory, name = path.rsplit("/", 1)
        assert directory == "/vault/secrets"
        assert f"vault.hashicorp.com/agent-inject-secret-{name}" in annotations
        assert f"vault.hashicorp.com/agent-inject-template-{name}" in annotations
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def test_service_selects_the_pods_by_named_ports() -> None:
    service = _one(BASE / "service.yaml", "Service")
    container = _container(_one(BASE / "deployment.yaml", "Deployment"))
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["selector"] == LABELS
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"http", "metrics"}
    for name, port in ports.items():
        assert port["targetPort"] == name and name in container_ports
        assert port["port"] == container_ports[name]


def test_hpa_and_pdb_target_the_deployment() -> None:
    deployment = _one(BASE / "deployment.yaml", "Deployment")
    hpa = _one(BASE / "hpa.yaml", "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = _one(BASE / "pdb.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_servicemonitor_scrapes_the_metrics_port() -> None:
    service = _one(BASE / "service.yaml", "Service")
    monitor = _one(BASE / "servicemonitor.yaml", "ServiceMonitor")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_networkpolicy_covers_the_pods_and_both_ports() -> None:
    policy = _one(BASE / "networkpolicy.yaml", "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == LABELS
    rules = policy["spec"]["ingress"]
    open_rule = next(r for r in rules if "from" not in r)
    assert [p["port"] for p in open_rule["ports"]] == ["http"]
    metrics_rule = next(r for r in rules if "from" in r)
    assert [p["port"] for p in metrics_rule["ports"]] == ["metrics"]


def _longest_prefix(routes: list[tuple[str, str]], path: str) -> str:
    def matches(prefix: str) -> bool:
        prefix = prefix.rstrip("/")
        return prefix == "" or path == prefix or path.startswith(prefix + "/")

    candidates = [(p, backend) for p, backend in routes if matches(p)]
    assert candidates, path
    return max(candidates, key=lambda c: len(c[0].rstrip("/")))[1]


def _ingress_routes() -> list[tuple[str, str]]:
    ingress = _one(DEPLOY / "examples" / "ingress.yaml", "Ingress")
    routes = []
    for rule in ingress["spec"]["rules"]:
        for item in rule["http"]["paths"]:
            assert item["pathType"] == "Prefix"
            routes.append((item["path"], item["backend"]["service"]["name"]))
    return routes


def _httproute_routes() -> list[tuple[str, str]]:
    route = _one(DEPLOY / "examples" / "httproute.yaml", "HTTPRoute")
    routes = []
    for rule in route["spec"]["rules"]:
        (backend,) = rule["backendRefs"]
        for match in rule["matches"]:
            assert match["path"]["type"] == "PathPrefix"
            routes.append((match["path"]["value"], backend["name"]))
    return routes


@pytest.mark.parametrize(
    "routes", [_ingress_routes, _httproute_routes], ids=["ingress", "httproute"]
)
def test_examples_send_only_the_prefix_to_the_router(routes: Any) -> None:
    table = routes()
    prefix = _one(BASE / "configmap.yaml", "ConfigMap")["data"]["PROXY_PROJECT"]
    router = "harbor-router"
    assert _longest_prefix(table, f"/v2/{prefix}/library/nginx/manifests/1.25") == router
    assert _longest_prefix(table, f"/v2/{prefix}/acme/tool/blobs/sha256:00") == router
    for harbor_path in (
        "/v2/",
        "/service/token",
        "/api/v2.0/projects",
        "/v2/library/nginx/tags/list",
        f"/v2/{prefix}x/a/manifests/1",
        "/",
    ):
        assert _longest_prefix(table, harbor_path) != router, harbor_path


def test_httproute_cross_namespace_backend_is_granted() -> None:
    docs = _docs(DEPLOY / "examples" / "httproute.yaml")
    route = next(d for d in docs if d["kind"] == "HTTPRoute")
    grant = next(d for d in docs if d["kind"] == "ReferenceGrant")
    refs = [b for r in route["spec"]["rules"] for b in r["backendRefs"] if "namespace" in b]
    assert refs
    for ref in refs:
        assert grant["metadata"]["namespace"] == ref["namespace"]
        assert any(t["name"] == ref["name"] for t in grant["spec"]["to"])
        assert grant["spec"]["from"][0]["namespace"] == route["metadata"]["namespace"]


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "redis-sentinel"])
def test_kustomize_renders(directory: pathlib.Path) -> None:
    kubectl = require_tool("kubectl")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert ("REDIS_PASSWORD_FILE" in env) == (directory == OVERLAY)
    assert {"HARBOR_USERNAME_FILE", "HARBOR_PASSWORD_FILE"} <= env
