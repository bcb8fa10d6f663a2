import pytest

from middleware.errors import InvalidRequest
from middleware.headers import bearer_or_api_key, request_id


def scope_with(*headers):
    return {"headers": list(headers)}


def test_request_id_is_kept_when_well_formed():
    assert request_id(scope_with((b"x-request-id", b"abc-123:x.y_z"))) == "abc-123:x.y_z"


def test_request_id_is_generated_when_absent():
    first, second = request_id(scope_with()), request_id(scope_with())
    assert len(first) == 32
    assert first != second


@pytest.mark.parametrize("value", [b"a" * 129, b"bad\r\nx-injected: 1", b"with space", b"", b"\xff"])
def test_malformed_request_id_is_refused(value):
    with pytest.raises(InvalidRequest) as caught:
        request_id(scope_with((b"x-request-id", value)))
    assert caught.value.param == "X-Request-Id"


def test_bearer_token_wins_over_x_api_key():
    scope = scope_with((b"x-api-key", b"other"), (b"authorization", b"Bearer  tok "))
    assert bearer_or_api_key(scope) == "tok"


def test_x_api_key_is_used_without_authorization():
    assert bearer_or_api_key(scope_with((b"x-api-key", b"k1"))) == "k1"


def test_non_bearer_authorization_is_no_credential():
    assert bearer_or_api_key(scope_with((b"authorization", b"Basic dXNlcg=="))) is None
