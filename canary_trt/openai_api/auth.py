"""The front's API key: with `--api-key-env VAR`, every /v1 route wants `Authorization: Bearer $VAR`.

The key is compared in constant time: `hmac.compare_digest` over SHA-256 digests of both sides, so the time a
refusal takes depends neither on how many leading bytes match nor on the key's length. Refusals are 401s in
OpenAI's shape as api.openai.com gives them: a missing key has `code` null, a wrong one `invalid_api_key`; both
carry `WWW-Authenticate: Bearer`, which a 401 must name (RFC 9110, section 15.5.2; RFC 6750, section 3)."""

from __future__ import annotations

import hashlib
import hmac

from .errors import ApiError

SCHEME = "bearer"  # authentication schemes are case-insensitive (RFC 9110, section 11.1)
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_token(header: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer ...` header, None when there are none."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != SCHEME or not token.strip():
        return None
    return token.strip()


def key_matches(token: str, key: str) -> bool:
    # Starlette decodes header bytes as latin-1 and os.environ decodes with surrogateescape: both encodings
    # give back the bytes that were sent and set, so a non-ASCII key compares as the same bytes.
    sent = hashlib.sha256(token.encode("latin-1", "surrogateescape")).digest()
    wanted = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(sent, wanted)


def require_key(header: str | None, key: str) -> None:
    """Raise the 401 for a missing or wrong key; return when the header carries `key`."""
    token = bearer_token(header)
    if token is None:
        raise ApiError(401, "missing API key: send it as the header 'Authorization: Bearer YOUR_KEY'",
                       headers=CHALLENGE)  # fmt: skip
    if not key_matches(token, key):
        raise ApiError(401, "incorrect API key provided", code="invalid_api_key", headers=CHALLENGE)
