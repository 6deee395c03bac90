"""The operator docs, the Grafana dashboard and the alert rules name only metrics that exist.

The contract below is the list of metric names agreed for harbor-router (DESIGN §7, the names of
the Rust router, and the client-connection metrics of ``docs/observability.md``). The dashboard
and the rules may use only those (plus the standard ``process_*``), and the dashboard shows every
one of them; ``docs/observability.md`` must describe every one of them, and every metric that
``harbor_router.metrics`` really exports, with the same type, labels and buckets.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "observability.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "harbor-router.json"
RULES = ROOT / "deploy" / "prometheus" / "harbor-router-rules.yaml"
PREFIX = "harbor_router_"

# name (without the prefix) → (type, labels)
CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    "requests_total": ("counter", ("method", "type", "status")),
    "request_duration_seconds": ("histogram", ("method", "req_type", "status_class")),
    "inflight_requests": ("gauge", ()),
    "response_bytes_total": ("counter", ("req_type",)),
    "rate_limit_rejected_total": ("counter", ()),
    "open_connections": ("gauge", ()),
    "connections_rejected_total": ("counter", ()),
    "connections_closed_total": ("counter", ("reason",)),
    "resolve_duration_seconds": ("histogram", ("result",)),
    "tags_resolve_duration_seconds": ("histogram", ("result",)),
    "cache_lookups_total": ("counter", ("result",)),
    "negative_cache_hits_total": ("counter", ()),
    "cache_stale_serves_total": ("counter", ()),
    "singleflight_dedup_total": ("counter", ()),
    "singleflight_inflight": ("gauge", ()),
    "upstream_requests_total": ("counter", ("project", "status")),
    "upstream_project_duration_seconds": ("histogram", ("project",)),
    "upstream_connection_errors_total": ("counter", ("reason",)),
    "blob_proxy_duration_seconds": ("histogram", ("result",)),
    "fanout_size": ("histogram", ()),
    "discovered_projects": ("gauge", ()),
    "discovery_errors_total": ("counter", ()),
    "discovery_last_success_timestamp_seconds": ("gauge", ()),
    "discovery_duration_seconds": ("histogram", ()),
    "circuit_breaker_state": ("gauge", ("project",)),
    "circuit_breaker_transitions_total": ("counter", ("project", "from", "to")),
    "redis_operations_total": ("counter", ("operation", "result")),
    "redis_fallback_total": ("counter", ()),
    "redis_reconnections_total": ("counter", ()),
    "cache_entries": ("gauge", ("backend",)),
    "build_info": ("gauge", ("version", "commit", "speedups")),
}
BREAKER_ENCODING = {"closed": 0, "open": 1, "half_open": 2}
# Labels Prometheus adds to every scraped series (target labels), usable in any query.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container"})
PROCESS_METRICS = re.compile(r"^process_[a-z_]+$")

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
     "unless", "offset", "inf", "nan"}
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\w)(\s*\()?")


# -- the contract and its series names ------------------------------------------------------


def series_names(name: str, kind: str) -> set[str]:
    """Every sample name one metric family exposes (histogram parts, ``_created``)."""
    base = name.removesuffix("_total") if kind == "counter" else name
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "counter":
        return {name, f"{base}_created"}
    return {name}


Families = dict[str, tuple[str, tuple[str, ...]]]  # full name → (type, labels)


def contract_families() -> Families:
    return {PREFIX + name: family for name, family in CONTRACT.items()}


def sample_index(families: Families) -> dict[str, str]:
    """Sample name → the family it belongs to."""
    return {
        series: name for name, (kind, _) in families.items() for series in series_names(name, kind)
    }


def contract_series() -> dict[str, str]:
    """Sample name (with prefix) → the contract metric it belongs to."""
    return sample_index(contract_families())


# -- a small PromQL reader: metric names, label matchers, grouping labels -------------------


def promql_refs(expr: str) -> tuple[set[str], list[tuple[str, str]], set[str]]:
    """``(metric names, [(metric, matcher label)], grouping labels)`` used by an expression."""
    expr = re.sub(r"\$\{?\w+\}?", "X", expr)  # Grafana variables ($__rate_interval, $job)
    matchers: list[tuple[str, str]] = []
    for metric, body in _SELECTOR.findall(_STRING.sub('""', expr)):
        for label in _MATCHER.findall(body):
            matchers.append((metric, label))
    grouping = {
        label.strip()
        for _, labels in _GROUPING.findall(expr)
        for label in labels.split(",")
        if label.strip()
    }
    bare = _STRING.sub('""', expr)
    bare = _GROUPING.sub(" ", bare)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    names = set()
    for ident, call in _IDENT.findall(bare):
        if call or ident.lower() in _KEYWORDS or ident == "X":
            continue
        names.add(ident)
    return names, matchers, grouping


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def check_promql(expr: str, where: str, families: Families | None = None) -> list[str]:
    """Problems with one expression: unknown metrics, labels the metric does not have."""
    families = contract_families() if families is None else families
    known = sample_index(families)
    problems = []
    if not balanced(expr):
        problems.append(f"{where}: unbalanced brackets in {expr!r}")
    names, matchers, grouping = promql_refs(expr)
    for name in names:
        if name not in known and not PROCESS_METRICS.match(name):
            problems.append(f"{where}: {name!r} is not a known metric")
    all_labels = set(TARGET_LABELS) | {"le"}
    for _, labels in families.values():
        all_labels |= set(labels)
    for metric, label in matchers:
        if not metric or metric not in known:
            continue
        allowed = (
            set(families[known[metric]][1])
            | TARGET_LABELS
            | ({"le"} if metric.endswith("_bucket") else set())
        )
        if label not in allowed:
            problems.append(f"{where}: {metric} has no label {label!r}")
    for label in grouping - all_labels:
        problems.append(f"{where}: no metric has the label {label!r}")
    return problems


_VALUE_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"([^"]*)"')


def check_label_values(expr: str, where: str, docs: str) -> list[str]:
    """Label values a query filters on (each plain word of a ``|`` list, not a pattern) that the
    docs never name (as `` `value` `` or ``label="value"``): a misspelt value matches no series
    and shows an empty panel."""
    problems = []
    for metric, body in _SELECTOR.findall(expr):
        for label, value in _VALUE_MATCHER.findall(body):
            if label in TARGET_LABELS:
                continue
            for word in value.split("|"):
                named = re.search(rf'`{re.escape(word)}`|{label}="{re.escape(word)}"', docs)
                if re.fullmatch(r"[\w-]+", word) and named is None:
                    problems.append(
                        f"{where}: {metric}: {label} value {word!r} is not in docs/observability.md"
                    )
    return problems


# -- the files -------------------------------------------------------------------------------


def load_yaml(text: str) -> Any:
    """PyYAML is in the test extra; a venv made before it was added skips, CI must have it."""
    if os.environ.get("CI") == "true":
        import yaml
    else:
        yaml = pytest.importorskip("yaml", reason="pip install -e '.[test]' (PyYAML)")
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def docs() -> str:
    return DOCS.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    data = load_yaml(RULES.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def alert_rules(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["spec"]["groups"] for rule in group["rules"]]


def docs_promql(docs: str) -> list[str]:
    """Expressions of the ```promql blocks: a line that starts at column 0 starts a new one."""
    exprs: list[str] = []
    for block in re.findall(r"```promql\n(.*?)```", docs, re.S):
        current: str | None = None
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                if current:
                    exprs.append(current)
                current = None
            elif line[0].isspace() and current is not None:
                current += "\n" + line
            else:
                if current:
                    exprs.append(current)
                current = line
        if current:
            exprs.append(current)
    return exprs


def docs_metric_table(docs: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``| `name` | type | `labels` | ... |`` rows of the metric reference."""
    section = docs[docs.index("\n## Metrics") : docs.index("\n## Golden signals")]
    out = {}
    for row in re.findall(
        r"^\| `(harbor_router_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \|", section, re.M
    ):
        name, kind, labels = row
        out[name] = (kind, tuple(re.findall(r"`([a-z_]+)`", labels)))
    return out


def docs_buckets(docs: str) -> dict[str, tuple[float, ...]]:
    section = docs[docs.index("### Histogram buckets") : docs.index("\n## Golden signals")]
    out = {}
    for name, bounds in re.findall(
        r"^\| `(harbor_router_[a-z0-9_]+)` \| ([^|]+) \|", section, re.M
    ):
        out[name] = tuple(float(b) for b in re.findall(r"\d+(?:\.\d+)?", bounds.split("(")[0]))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


# -- the dashboard ---------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard_on_a_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"] and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]


def dashboard_problems(dashboard: dict[str, Any], docs: str) -> tuple[list[str], set[str]]:
    """Problems with the dashboard's queries, and the metric names they use."""
    problems = []
    used: set[str] = set()
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r}"
            problems += check_promql(target["expr"], where)
            problems += check_label_values(target["expr"], where, docs)
            used |= promql_refs(target["expr"])[0]
    return problems, used


def test_dashboard_queries_use_only_contract_metrics_and_labels(
    dashboard: dict[str, Any], docs: str
) -> None:
    problems, used = dashboard_problems(dashboard, docs)
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", str(query))
        if variable["type"] == "query":
            assert found, f"variable {variable['name']}: {query!r}"
            assert found[1] in contract_series(), found[1]
            assert found[2] in TARGET_LABELS, found[2]
    assert problems == []
    # every part of the contract someone watches is on the dashboard
    shown = {contract_series().get(name, name) for name in used}
    missing = {PREFIX + n for n in CONTRACT} - shown
    assert missing == set()


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        (
            'sum(rate(harbor_router_connections_refused_total{job=~"$job"}[5m]))',
            "'harbor_router_connections_refused_total' is not a known metric",
        ),
        (
            "sum(harbor_router_l1_cache_events_total)",  # documented, but not in the contract
            "'harbor_router_l1_cache_events_total' is not a known metric",
        ),
        (
            'sum(harbor_router_open_connections{reason="header_timeout"})',
            "harbor_router_open_connections has no label 'reason'",
        ),
        (
            'sum(rate(harbor_router_connections_closed_total{reason="idle_timeout"}[5m]))',
            "harbor_router_connections_closed_total: reason value 'idle_timeout' is not in "
            "docs/observability.md",
        ),
        (
            "sum(rate(harbor_router_upstream_connection_errors_total"
            '{reason=~"read_timeout|pool-full"}[5m]))',
            "harbor_router_upstream_connection_errors_total: reason value 'pool-full' is not in "
            "docs/observability.md",
        ),
    ],
)
def test_dashboard_check_rejects_what_is_not_agreed(
    dashboard: dict[str, Any], docs: str, expr: str, problem: str
) -> None:
    """The check above can fail: one query of a copy of the dashboard changed, one problem."""
    broken = copy.deepcopy(dashboard)
    panel = next(p for p in all_panels(broken["panels"]) if p.get("targets"))
    panel["targets"][0]["expr"] = expr
    assert dashboard_problems(broken, docs)[0] == [f"panel {panel['title']!r}: {problem}"]


# -- the alert rules -------------------------------------------------------------------------


def test_rules_are_a_prometheus_rule(rules: dict[str, Any]) -> None:
    assert rules["apiVersion"] == "monitoring.coreos.com/v1"
    assert rules["kind"] == "PrometheusRule"
    assert rules["metadata"]["name"]
    groups = rules["spec"]["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)
    names = [rule["alert"] for rule in alert_rules(rules)]
    assert len(names) == len(set(names))
    assert len(names) >= 5
    for rule in alert_rules(rules):
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys()


def test_rules_use_only_contract_metrics_and_labels(rules: dict[str, Any]) -> None:
    problems = []
    for rule in alert_rules(rules):
        problems += check_promql(rule["expr"], rule["alert"])
    assert problems == []


def test_every_alert_has_a_runbook_in_the_docs(rules: dict[str, Any], docs: str) -> None:
    headings = {slug(h): h for h in re.findall(r"^### (.+)$", docs, re.M)}
    for rule in alert_rules(rules):
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[-1]
        assert anchor == slug(rule["alert"]), rule["alert"]
        assert anchor in headings, f"docs/observability.md has no section for {rule['alert']}"


def test_breaker_alerts_use_the_documented_encoding(rules: dict[str, Any], docs: str) -> None:
    assert "`0` closed, `1` open, `2` half-open" in docs
    exprs = [r["expr"] for r in alert_rules(rules) if "circuit_breaker_state" in r["expr"]]
    assert exprs and all(re.search(r"==\s*1\b", e) for e in exprs)


# -- the docs --------------------------------------------------------------------------------


def test_docs_describe_every_contract_metric(docs: str) -> None:
    table = docs_metric_table(docs)
    for name, (kind, labels) in CONTRACT.items():
        assert PREFIX + name in table, f"{PREFIX + name} is not in the metric reference"
        assert table[PREFIX + name] == (kind, labels), PREFIX + name


def test_docs_name_no_unknown_metric(docs: str) -> None:
    table = docs_metric_table(docs)
    known = set(table) | set(sample_index(table))
    mentioned = set(re.findall(r"\bharbor_router_[a-z0-9_]+[a-z]\b", docs))
    assert mentioned - known == set()


def test_docs_promql_is_well_formed(docs: str) -> None:
    """Metric reference rows beyond the contract are checked against the code below."""
    table = docs_metric_table(docs)
    exprs = docs_promql(docs)
    assert len(exprs) > 20
    problems = []
    for expr in exprs:
        assert promql_refs(expr)[0], expr
        problems += check_promql(expr, "docs", table)
    assert problems == []


def test_docs_cover_the_required_topics(docs: str) -> None:
    for needle in (
        "/debug/projects",
        "/debug/resolve?name=",
        "DELETE /debug/cache?name=",
        "LOG_FORMAT=json",
        "LOG_LEVEL",
        "harbor_router.access",
        "histogram_quantile(0.99",
        "histogram_quantile(0.5",
        "WORKERS",
        "jq",
    ):
        assert needle in docs, needle


# -- the docs against the code ---------------------------------------------------------------


def _metrics_module() -> Any:
    try:
        return importlib.import_module("harbor_router.metrics")
    except ModuleNotFoundError as exc:
        if exc.name != "harbor_router.metrics":
            raise
        if os.environ.get("CI") == "true":
            pytest.fail("harbor_router.metrics must exist under CI=true")
        pytest.skip("harbor_router.metrics is not there yet: docs ↔ code not checked")


def _exported(module: Any) -> list[Any]:
    """The families a busy process exports, parsed back from the text format."""
    from prometheus_client.parser import text_string_to_metric_families

    from harbor_router import routes

    metrics = module.Metrics()
    # One observation in each histogram whose series appear only once observed.
    metrics.request_done("GET", routes.MANIFEST, 200, 0.01, 10)
    metrics.resolved(False, "found", 0.1)
    metrics.resolved(True, "found", 0.1)
    metrics.upstream_done("dockerhub", "200", 0.01)
    metrics.blob_done("copy", 0.5)
    metrics.connection_error("timeout")
    metrics.transition("dockerhub", "closed", "open")
    text = module.render(metrics.collect()).decode()
    return list(text_string_to_metric_families(text))


def _exposed_name(family: Any) -> str:
    return f"{family.name}_total" if family.type == "counter" else family.name


def test_code_exports_what_the_docs_describe(docs: str) -> None:
    module = _metrics_module()
    families = {_exposed_name(f): f for f in _exported(module)}
    code = {name for name in families if name.startswith(PREFIX)}
    documented = set(docs_metric_table(docs))
    assert code - documented == set(), "exported but not in docs/observability.md"
    assert documented - code == set(), "documented but not exported"
    table = docs_metric_table(docs)
    for name in sorted(code):
        family = families[name]
        assert table[name][0] == family.type, name
        labels = {
            label for sample in family.samples for label in sample.labels if label not in {"le"}
        }
        assert labels <= set(table[name][1]), f"{name}: {labels} vs {table[name][1]}"
    for name in CONTRACT:
        assert PREFIX + name in code, f"contract metric {PREFIX + name} is not exported"


def test_code_labels_are_the_contract_labels() -> None:
    module = _metrics_module()
    metrics = module.Metrics()
    for family in metrics.collect():
        name = _exposed_name(family)
        short = name.removeprefix(PREFIX)
        if short in CONTRACT:
            assert tuple(family._labelnames) == CONTRACT[short][1], name


def test_code_buckets_are_the_documented_buckets(docs: str) -> None:
    module = _metrics_module()
    documented = docs_buckets(docs)
    exported = {}
    for family in _exported(module):
        if family.type != "histogram":
            continue
        bounds = sorted(
            {float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")}
        )
        exported[family.name] = tuple(b for b in bounds if b != float("inf"))
    assert set(exported) == set(documented)
    for name, bounds in exported.items():
        assert documented[name] == bounds, name


def test_code_breaker_encoding_is_the_documented_one() -> None:
    module = _metrics_module()
    assert module.BREAKER_STATES == BREAKER_ENCODING
