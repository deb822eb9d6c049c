"""Bearer-token auth for `/v1`: any token of `API_TOKENS` is accepted.

Tokens are compared in constant time, and every configured token is
compared on every request, so neither the match nor its position leaks
through timing. With no tokens configured the API is open; that is only
allowed on a loopback address (`config.check_exposure`).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from batchwarden.config import Secret

bearer = HTTPBearer(auto_error=False, description="one of BATCHWARDEN_API_TOKENS")


def token_matches(given: str, tokens: tuple[Secret, ...]) -> bool:
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given.encode(), token.reveal().encode())
    return matched


def require_token(tokens: tuple[Secret, ...]):
    """A dependency that refuses requests without a valid bearer token."""

    async def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if not tokens:
            return
        if credentials is None:
            raise _unauthorized("missing bearer token (Authorization: Bearer ...)")
        if not token_matches(credentials.credentials, tokens):
            raise _unauthorized("the bearer token is not valid")

    return check


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"www-authenticate": "Bearer"})
