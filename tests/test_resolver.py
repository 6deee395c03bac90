"""Resolver units: the URL each project is asked on, for every kind of route.

The fan-out builds a project's URL from that project's encoded base and the route's name and
reference, which passed the route grammar; it must be exactly the URL the whole text would
parse to.
"""

from __future__ import annotations

from typing import cast

import aiohttp
import pytest
from yarl import URL

from harbor_router import routes
from harbor_router.auth import Credentials
from harbor_router.breaker import Breakers
from harbor_router.projects import Project
from harbor_router.resolver import SECTIONS, Resolver

DIGEST = "sha256:" + "0123456789abcdef" * 4
TARGETS = [
    ("/v2/proxy/library/nginx/manifests/1.25", ""),
    ("/v2/proxy/nginx/manifests/latest", ""),  # one segment: library/ for Docker Hub only
    ("/v2/proxy/acme/tool.cli/blobs/" + DIGEST, ""),
    ("/v2/proxy/a0/b-c/d__e/f.g/manifests/" + DIGEST, ""),
    ("/v2/proxy/acme/tool/manifests/V1.0_rc-1", ""),
    ("/v2/proxy/acme/tool/referrers/" + DIGEST, ""),
    (
        "/v2/proxy/acme/tool/referrers/" + DIGEST,
        "artifactType=application%2Fvnd.example.sig%2Bjson",
    ),
    ("/v2/proxy/acme/tool/tags/list", ""),
    ("/v2/proxy/acme/tool/tags/list", "n=10&last=v1.2"),
    ("/v2/proxy/ghcr.io/acme/tool/manifests/1", ""),  # host-prefixed
    ("/v2/proxy/docker.io/nginx/manifests/1", ""),
    ("/v2/proxy/acme/tool/manifests/1", "ns=ghcr.io"),
]
PROJECTS = [Project("dockerhub", "docker-hub"), Project("ghcr-mirror.2", "github-ghcr")]


def _whole_text(harbor_url: str, project: Project, route: routes.Route) -> URL:
    name = project.upstream_name(route.upstream)
    if route.kind == routes.TAGS:
        text = f"{harbor_url}/v2/{project.name}/{name}/tags/list"
    else:
        text = f"{harbor_url}/v2/{project.name}/{name}/{SECTIONS[route.kind]}/{route.reference}"
    return URL(text + (f"?{route.query}" if route.query else ""))


@pytest.mark.parametrize(
    "harbor_url",
    [
        "http://harbor:8080",
        "https://harbor.example.com/registry",
        "http://HARBOR.Example.com:80/a.b/c",
        "http://[::1]:9000",
    ],
)
def test_a_projects_url_is_the_one_its_whole_text_parses_to(harbor_url: str) -> None:
    session = cast(aiohttp.ClientSession, None)  # building a URL asks nobody
    resolver = Resolver(
        session, harbor_url, Credentials("", ""), Breakers(3, 30.0), timeout=1.0, max_body=1024
    )
    router = routes.Router("proxy")
    for path, query in TARGETS:
        route = router.parse("GET", path, query)
        for project in PROJECTS:
            expected = _whole_text(harbor_url, project, route)
            for _ in range(2):  # the first builds the project's base, the second reuses it
                url = resolver.url(project, route)
                assert url == expected, (path, query, project.name)
                assert str(url) == str(expected)
                assert url.raw_path_qs == expected.raw_path_qs
                assert url.host_port_subcomponent == expected.host_port_subcomponent
