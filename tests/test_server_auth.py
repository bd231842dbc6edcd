"""One authentication rule for the whole app: with an API key, every route in the app's
route table answers 401 without it (and with a wrong one), except /health, /metrics
when the operator allows it, and the scope's static files; --no-scope serves no scope
route at all."""

from __future__ import annotations

import httpx
import pytest
from fastapi.routing import APIRoute
from server_harness import running_server
from starlette.routing import Mount, Route

from kvscope.scope.routes import PagesMount

KEY = "route-key"
WRONG = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
         {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}]
PUBLIC = {("/health", "GET")}
STREAMING = {"/scope/api/live"}


@pytest.fixture(scope="module")
def server(loaded_fp32):
    with running_server(loaded_fp32, api_key=KEY) as running:
        yield running


def route_table(routes, prefix: str = "") -> list[tuple[str, str]]:
    """(path, method) for every route of the app, FastAPI's docs and schema included
    (FastAPI keeps an included router as one entry holding the router's own routes)."""
    pairs = []
    for route in routes:
        if hasattr(route, "original_router"):
            pairs += route_table(route.original_router.routes,
                                 prefix + route.include_context.prefix)
        elif isinstance(route, APIRoute | Route):
            pairs += [(prefix + route.path, method)
                      for method in sorted(route.methods - {"HEAD"})]
        else:
            assert isinstance(route, PagesMount), f"an unexpected kind of route: {route!r}"
    return pairs


def call(server, path: str, method: str, headers: dict) -> int:
    with httpx.stream(method, server.url + path, headers=headers, timeout=60,
                      json={} if method == "POST" else None) as response:
        return response.status_code  # leaves a stream (the live events) unread


def test_every_route_but_health_needs_the_key(server):
    routes = route_table(server.app.routes)
    paths = {path for path, _ in routes}
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/stats", "/metrics",
            "/tokenize", "/detokenize", "/openapi.json", "/docs", "/scope/api/live",
            "/scope/api/lab/run", "/scope/api/info"} <= paths
    for path, method in routes:
        for headers in WRONG:
            status = call(server, path, method, headers)
            if (path, method) in PUBLIC:
                assert status == 200, (path, method, headers)
                continue
            assert status == 401, (path, method, headers)
        with_key = call(server, path, method, {"Authorization": f"Bearer {KEY}"})
        assert with_key != 401, (path, method)


def test_the_401_body_and_header(server):
    response = httpx.get(server.url + "/scope/api/live")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"error": {
        "message": "missing or invalid API key: send 'Authorization: Bearer <key>'",
        "type": "authentication_error", "param": None, "code": "invalid_api_key"}}


def test_static_pages_are_public_but_nothing_else_under_them(server):
    for path in ("/", "/index.html", "/monitor.html", "/lessons/kv-cache.html",
                 "/js/api.js", "/css/scope.css"):
        assert httpx.get(server.url + path).status_code == 200, path
    for path in ("/nothing-here", "/lessons/", "/js/../../routes.py", "/%2e%2e/routes.py",
                 "/scope/api/", "/v1/", "/v1/files"):
        assert httpx.get(server.url + path).status_code == 401, path
    assert httpx.post(server.url + "/index.html").status_code == 401


def test_metrics_without_the_key_only_when_allowed(loaded_fp32):
    with running_server(loaded_fp32, api_key=KEY, public_metrics=True) as open_metrics:
        response = httpx.get(open_metrics.url + "/metrics")
        assert response.status_code == 200
        assert "kvscope:num_requests_running" in response.text
        assert httpx.get(open_metrics.url + "/stats").status_code == 401
        assert httpx.get(open_metrics.url + "/scope/api/info").status_code == 401


def test_no_scope_serves_no_scope_route(loaded_fp32):
    with running_server(loaded_fp32, api_key=KEY, scope=False) as bare:
        paths = [path for path, _ in route_table(bare.app.routes)]
        assert not [p for p in paths if p.startswith("/scope")]
        assert not [r for r in bare.app.routes if isinstance(r, Mount)]
        auth = {"Authorization": f"Bearer {KEY}"}
        for path in ("/", "/index.html", "/scope/api/info", "/js/api.js"):
            assert httpx.get(bare.url + path, headers=auth).status_code == 404, path
            assert httpx.get(bare.url + path).status_code == 401, path  # nothing public
        assert httpx.get(bare.url + "/v1/models", headers=auth).status_code == 200
