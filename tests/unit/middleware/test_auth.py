import json

import pytest

from middleware.auth import AuthMiddleware, AuthOptions
from middleware.boundary import ErrorMiddleware
from middleware.call import Call


def http_scope(path="/v1/chat/completions", *headers):
    return {"type": "http", "method": "POST", "path": path, "headers": list(headers)}


async def no_body():
    return {"type": "http.request", "body": b"", "more_body": False}


class Recorder:
    def __init__(self):
        self.messages = []

    async def __call__(self, message):
        self.messages.append(message)

    @property
    def status(self):
        return self.messages[0]["status"]

    @property
    def json(self):
        return json.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


def stack(options):
    seen = {}

    async def inner(scope, receive, send):
        call = Call.of(scope)
        seen["tenant"], seen["client_key"] = call.tenant, call.client_key
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return ErrorMiddleware(AuthMiddleware(inner, options)), seen


KEYS = AuthOptions(keys={"gk-team-a": "team-a", "gk-team-b": "team-b"}, admin_key="gk-admin")


@pytest.mark.anyio
async def test_valid_gateway_key_sets_tenant_and_is_not_kept_for_upstream():
    app, seen = stack(KEYS)
    sent = Recorder()
    await app(http_scope("/v1/chat/completions", (b"authorization", b"Bearer gk-team-b")), no_body, sent)
    assert sent.status == 200
    assert seen == {"tenant": "team-b", "client_key": None}


@pytest.mark.anyio
async def test_x_api_key_is_accepted_like_a_bearer_token():
    app, seen = stack(KEYS)
    await app(http_scope("/v1/messages", (b"x-api-key", b"gk-team-a")), no_body, Recorder())
    assert seen["tenant"] == "team-a"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers", [(), ((b"authorization", b"Bearer nope"),), ((b"authorization", b"Bearer gk-team"),)]
)
async def test_missing_or_wrong_key_is_401_in_openai_shape(headers):
    app, seen = stack(KEYS)
    sent = Recorder()
    await app(http_scope("/v1/chat/completions", *headers), no_body, sent)
    assert sent.status == 401
    assert sent.json["error"]["type"] == "authentication_error"
    assert set(sent.json["error"]) == {"message", "type", "code", "param"}
    assert seen == {}


@pytest.mark.anyio
async def test_tenant_key_on_admin_path_is_403_and_admin_key_passes():
    app, seen = stack(KEYS)
    tenant = Recorder()
    await app(http_scope("/sluice/usage", (b"authorization", b"Bearer gk-team-a")), no_body, tenant)
    assert tenant.status == 403
    admin = Recorder()
    await app(http_scope("/metrics", (b"authorization", b"Bearer gk-admin")), no_body, admin)
    assert admin.status == 200
    assert seen["tenant"] == "admin"


@pytest.mark.anyio
async def test_health_paths_need_no_key():
    app, _ = stack(KEYS)
    sent = Recorder()
    await app(http_scope("/healthz"), no_body, sent)
    assert sent.status == 200


@pytest.mark.anyio
async def test_pass_through_mode_keeps_the_client_key_and_namespaces_the_tenant():
    app, seen = stack(AuthOptions())
    await app(http_scope("/v1/chat/completions", (b"authorization", b"Bearer sk-client-1")), no_body, Recorder())
    first = dict(seen)
    await app(http_scope("/v1/chat/completions", (b"authorization", b"Bearer sk-client-2")), no_body, Recorder())
    assert first["client_key"] == "sk-client-1"
    assert seen["client_key"] == "sk-client-2"
    assert first["tenant"].startswith("anon:")
    assert first["tenant"] != seen["tenant"]
    assert "sk-client" not in first["tenant"]


@pytest.mark.anyio
async def test_auth_middleware_guards_a_plain_starlette_app():
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def whoami(request):
        return JSONResponse({"tenant": Call.of(request.scope).tenant})

    app = Starlette(routes=[Route("/whoami", whoami)])
    app.add_middleware(AuthMiddleware, options=AuthOptions(keys={"secret-key": "team-a"}))
    app.add_middleware(ErrorMiddleware)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        refused = await client.get("/whoami")
        allowed = await client.get("/whoami", headers={"authorization": "Bearer secret-key"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert allowed.json() == {"tenant": "team-a"}
