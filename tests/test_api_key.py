"""The front's API key (canary_trt/openai_api/auth.py), in process with Starlette's test client: every /v1 route
refuses a missing or wrong key with a 401 in OpenAI's shape, the key is compared with hmac.compare_digest
(spied on), /health needs none, and with a key FastAPI's docs and schema pages are closed. The same against a
live Triton: tests/test_openai_api.py and tests/test_kubernetes_security.py."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from fastapi.testclient import TestClient

from canary_trt.openai_api import Settings, create_app
from canary_trt.openai_api.auth import bearer_token, key_matches
from canary_trt.server import free_ports

KEY = "s3cret-key"
ERROR_KEYS = {"message", "type", "param", "code"}


def client(api_key: str | None = KEY) -> TestClient:
    nowhere = f"127.0.0.1:{free_ports('127.0.0.1', None)[0]}"  # no Triton: /v1/models needs none
    return TestClient(create_app(Settings(nowhere, api_key=api_key)))


def refusal(response, code: str | None) -> dict:
    """OpenAI's 401: `{"error": {"message", "type", "param", "code"}}`, type invalid_request_error."""
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert set(response.json()) == {"error"} and set(error) == ERROR_KEYS
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, code)
    assert "API key" in error["message"] and KEY not in error["message"]
    assert response.headers["www-authenticate"] == "Bearer"
    return error


@pytest.mark.parametrize("route, method", [("/v1/models", "get"), ("/v1/models/canary-qwen-2.5b", "get"),
                                           ("/v1/audio/transcriptions", "post"), ("/v1/chat/completions", "post")])
def test_every_v1_route_refuses_a_missing_or_wrong_key(route, method):
    with client() as front:
        call = getattr(front, method)
        refusal(call(route), None)  # OpenAI: a missing key has no code
        for header in (f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer ", f"Basic {KEY}", KEY):
            response = call(route, headers={"Authorization": header})
            refusal(response, "invalid_api_key" if bearer_token(header) else None)


def test_the_right_key_is_accepted_and_the_scheme_is_case_insensitive():
    with client() as front:
        for scheme in ("Bearer", "bearer", "BEARER"):
            response = front.get("/v1/models", headers={"Authorization": f"{scheme} {KEY}"})
            assert response.status_code == 200 and response.json()["object"] == "list"


def test_keys_are_compared_with_compare_digest(monkeypatch):
    """Each check is one hmac.compare_digest of the two SHA-256 digests: constant time in the bytes that match
    and in the key's length; no `==` on the key anywhere on the path."""
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with client() as front:
        assert front.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert front.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    digest = lambda text: hashlib.sha256(text.encode()).digest()  # noqa: E731
    assert calls == [(digest(KEY), digest(KEY)), (digest("nope"), digest(KEY))]


def test_a_non_ascii_key_compares_as_the_bytes_sent():
    key = "clé-ü"
    sent = key.encode("utf-8").decode("latin-1")  # how Starlette hands over a header's bytes
    assert key_matches(sent, key) and not key_matches(key[:-1], key)


def test_health_needs_no_key_and_docs_close_with_one():
    with client() as front:
        assert front.get("/health").status_code == 503  # Triton's state, not a 401
        for page in ("/docs", "/redoc", "/openapi.json"):
            assert front.get(page).status_code == 404, page
    with client(api_key=None) as open_front:
        assert open_front.get("/v1/models").status_code == 200  # no key set: open, as before
        assert open_front.get("/openapi.json").status_code == 200
