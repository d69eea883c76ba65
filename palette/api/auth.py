"""Who is calling: the `sub` claim of a bearer JWT.

Locally the facade verifies HS256 tokens signed with a secret kept in the data directory
(`palette token create --user alice` prints one). On AWS, API Gateway's JWT authorizer
(Cognito) has verified the token before the Lambda runs; the claims arrive in the event.

Either way the `sub` must be a valid user id (`contracts.identifiers.user_id_problem`: not
blank, no surrounding whitespace, no control character, at most 128 characters), even in a
token signed with the real key: a user id names folders and index keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import jwt

from contracts.identifiers import user_id_problem
from palette.api.errors import Unauthorized

ISSUER = "palette-local"


class CallerIdentity(Protocol):
    def user_id(self, headers: dict[str, str], raw_event: dict[str, Any]) -> str:
        """The caller's user id, or Unauthorized."""


class LocalTokens:
    """Issues and verifies the local facade's HS256 tokens.

    With `generations` (a user's current token generation, `palette.users`), a token
    carries the generation it was issued at (`gen`) and one issued before the user's
    password changed or the user was deleted is refused."""

    def __init__(self, secret: bytes, generations: Callable[[str], int] | None = None) -> None:
        self._secret = secret
        self._generations = generations

    def issue(self, user: str, ttl_seconds: int = 30 * 24 * 3600) -> str:
        if problem := user_id_problem(user):
            raise ValueError(problem)
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user, "iss": ISSUER, "iat": now, "exp": now + ttl_seconds}
        if self._generations is not None and (generation := self._generations(user)):
            claims["gen"] = generation
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def user_id(self, headers: dict[str, str], raw_event: dict[str, Any]) -> str:
        token = bearer_token(headers)
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the bearer token has expired") from None
        except jwt.InvalidTokenError as error:
            raise Unauthorized(f"invalid bearer token: {error}") from None
        user = checked_user_id(claims["sub"])
        if self._generations is not None and claims.get("gen", 0) != self._generations(user):
            raise Unauthorized("the bearer token was revoked: the user's password changed or the user was deleted")
        return user


class ApiGatewayJwtClaims:
    """Reads `sub` from the claims that API Gateway's JWT authorizer put in the event."""

    def user_id(self, headers: dict[str, str], raw_event: dict[str, Any]) -> str:
        claims = raw_event.get("requestContext", {}).get("authorizer", {}).get("jwt", {}).get("claims")
        if not claims or not claims.get("sub"):
            raise Unauthorized("no verified identity in the request")
        return checked_user_id(claims["sub"])


def checked_user_id(sub: Any) -> str:
    """The token's subject as a user id, or Unauthorized when it cannot be one."""
    if problem := user_id_problem(sub):
        raise Unauthorized(f"the token's subject is not a valid user id: {problem}")
    return str(sub)


def bearer_token(headers: dict[str, str]) -> str:
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if not value:
        raise Unauthorized("missing Authorization: Bearer <token> header")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()
