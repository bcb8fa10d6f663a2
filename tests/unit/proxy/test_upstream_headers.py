from middleware.call import AttemptRecord, Call, Route, Target
from proxy.upstream_headers import provider_key, response_headers, upstream_headers
from proxy.upstream_request import upstream_body, upstream_url

OPENAI = Target("openai", "gpt-4o-mini", "https://api.openai.com/v1", api_key=None)
GROQ = Target("groq", "llama", "https://api.groq.com/openai/v1", api_key=None)
KEYED = Target("cerebras", "llama3.1-8b", "https://api.cerebras.ai/v1", api_key="sk-configured")


def call_to(*targets, client_key=None):
    call = Call(request_id="rid", client_key=client_key)
    call.route = Route("r", targets)
    call.target = targets[0]
    return call


def test_configured_key_wins_over_the_client_key():
    assert provider_key(call_to(KEYED, client_key="sk-client"), KEYED) == "sk-configured"


def test_client_key_goes_only_to_the_provider_it_was_meant_for():
    call = call_to(OPENAI, GROQ, client_key="sk-client")
    assert provider_key(call, OPENAI) == "sk-client"
    assert provider_key(call, GROQ) is None


def test_upstream_headers_drop_client_credentials_and_proxy_hints():
    scope = {
        "headers": [
            (b"host", b"gateway:8080"),
            (b"authorization", b"Bearer gk"),
            (b"x-api-key", b"gk"),
            (b"content-type", b"application/json"),
            (b"content-length", b"10"),
            (b"connection", b"keep-alive"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"forwarded", b"for=1.2.3.4"),
            (b"x-sluice-cache", b"on"),
            (b"accept-encoding", b"gzip"),
            (b"openai-organization", b"org-1"),
        ]
    }
    headers = dict(upstream_headers(scope, call_to(KEYED), KEYED))
    assert headers == {
        "content-type": "application/json",
        "openai-organization": "org-1",
        "authorization": "Bearer sk-configured",
        "accept-encoding": "identity",
        "x-request-id": "rid",
    }


def test_response_headers_keep_rate_limits_and_rename_the_provider_request_id():
    raw = (
        (b"Content-Type", b"application/json"),
        (b"x-ratelimit-remaining-requests", b"9"),
        (b"X-Request-Id", b"req_up"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Set-Cookie", b"a=b"),
        (b"Date", b"x"),
        (b"x-sluice-cache", b"HIT"),
    )
    call = call_to(KEYED)
    call.tries.append(AttemptRecord(KEYED.name, KEYED.provider, KEYED.model, 0.0))
    assert response_headers(raw, call, KEYED) == [
        (b"content-type", b"application/json"),
        (b"x-ratelimit-remaining-requests", b"9"),
        (b"x-upstream-request-id", b"req_up"),
        (b"x-sluice-provider", b"cerebras"),
        (b"x-sluice-model", b"llama3.1-8b"),
        (b"x-sluice-attempts", b"1"),
    ]


def test_upstream_url_joins_base_url_path_and_query():
    scope = {"path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"a=1"}
    assert str(upstream_url(scope, KEYED)) == "https://api.cerebras.ai/v1/chat/completions?a=1"


def test_upstream_body_rewrites_only_the_model():
    call = call_to(KEYED)
    call.body = b'{"model": "fast", "messages": [{"role": "user", "content": "h\\u00e9"}], "n": 2}'
    assert upstream_body(call, KEYED, call.body) == (
        '{"model":"llama3.1-8b","messages":[{"role":"user","content":"hé"}],"n":2}'.encode()
    )


def test_upstream_body_is_the_clients_bytes_when_the_model_already_matches():
    call = call_to(KEYED)
    call.body = b'{ "model" : "llama3.1-8b" }'
    assert upstream_body(call, KEYED, call.body) is call.body
