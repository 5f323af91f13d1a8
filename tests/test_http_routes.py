"""The adapters' router: exact and templated paths, 404 and 405, HEAD for GET routes."""

from __future__ import annotations

import pytest

from adapters.http import routes
from adapters.http.routes import NoRoute, Router


async def contracts(request):  # handlers are only compared by identity here
    return None


async def keep(request):
    return None


async def shutdown(request):
    return None


ROUTER = Router([routes.post("/contracts", contracts), routes.get("/keep/{kuuid}", keep),
                 routes.delete("/keep/{kuuid}", shutdown)])


def test_exact_and_templated_paths_resolve_with_their_parameters():
    assert ROUTER.resolve("POST", "/contracts") == (contracts, {})
    assert ROUTER.resolve("GET", "/keep/abc-1") == (keep, {"kuuid": "abc-1"})
    assert ROUTER.resolve("DELETE", "/keep/abc-1") == (shutdown, {"kuuid": "abc-1"})
    assert ROUTER.resolve("HEAD", "/keep/abc-1") == (keep, {"kuuid": "abc-1"})


@pytest.mark.parametrize("path", ["/contract", "/contracts/x", "/keep/", "/keep/a/b", "/keep", "/"])
def test_unknown_paths_are_404(path):
    with pytest.raises(NoRoute) as missing:
        ROUTER.resolve("GET" if path.startswith("/keep") else "POST", path)
    assert missing.value.status == 404


def test_a_known_path_with_another_method_is_405_naming_the_allowed_ones():
    with pytest.raises(NoRoute) as refused:
        ROUTER.resolve("PUT", "/keep/abc-1")
    assert refused.value.status == 405 and set(refused.value.allowed) == {"GET", "HEAD", "DELETE"}
    with pytest.raises(NoRoute) as refused:
        ROUTER.resolve("GET", "/contracts")
    assert refused.value.allowed == ("POST",)


def test_template_names_are_literal_elsewhere():
    router = Router([routes.get("/a.b/{x}", keep)])
    assert router.resolve("GET", "/a.b/1") == (keep, {"x": "1"})
    with pytest.raises(NoRoute):
        router.resolve("GET", "/aXb/1")  # the dot is not a regex wildcard


def test_a_trailing_slash_finds_the_same_route_once_registered():
    router = Router([routes.post("/new_keep", contracts), routes.post("/keep/{kuuid}/", keep), routes.get("/", shutdown)])
    assert router.resolve("POST", "/new_keep/") == (contracts, {})
    assert router.resolve("POST", "/new_keep") == (contracts, {})
    assert router.resolve("POST", "/keep/k1") == (keep, {"kuuid": "k1"})
    assert router.resolve("POST", "/keep/k1/") == (keep, {"kuuid": "k1"})
    assert router.resolve("GET", "/") == (shutdown, {})
    with pytest.raises(NoRoute):
        router.resolve("POST", "/new_keep//")


def test_a_forwarding_route_is_bound_by_the_runner_not_the_router():
    route = routes.forward("POST", "/keep/{kuuid}", lambda params: f"enarx.keep.{params['kuuid']}")
    assert route.handler is None and route.forward.subject({"kuuid": "k1"}) == "enarx.keep.k1"
    with pytest.raises(ValueError, match="no handler"):
        Router([route])


async def test_an_internal_route_on_an_open_site_demands_the_internal_credential(start_node, data_dir):
    from adapters.http.runner import HttpServer, Site
    from adapters.http.mesatee import render_error
    from bus.server import free_port
    import aiohttp
    from aiohttp import web
    from tests.conftest import internal_token

    async def hello(request: web.BaseRequest) -> web.Response:
        return web.json_response({"ok": True})

    site = Site("probe", free_port(), "adapter", lambda context: [routes.get("/open", hello),
                                                                  routes.post("/hello", hello, internal=True)],
                render_error)
    server = HttpServer("127.0.0.1", data_dir)
    await server.start([site], {"adapter": None})
    try:
        base = server.bound["probe"]
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/open") as response:
                assert response.status == 200
            async with http.post(base + "/hello") as response:
                assert response.status == 401 and "internal.token" in (await response.json())["message"]
            async with http.post(base + "/hello", headers={"Authorization": f"Bearer {internal_token(data_dir)}"}) as response:
                assert response.status == 200
    finally:
        await server.stop()
