"""`POST /auth/login`: a local user's name and password for the bearer token the facade takes.

Only on the embedded runtime (on AWS, Cognito signs people in and API Gateway's authorizer
checks its tokens). The token is the HS256 token `palette token create` prints, valid
`LOGIN_TOKEN_TTL_SECONDS`. A wrong password and an unknown user answer the same 401
INVALID_CREDENTIALS after the same argon2 work (`palette.users.LocalUsers.verify`); failures
are limited per name and per address, and checks at once per server
(`palette.api.login_limits`). The route runs in the facade's request pool like every other,
so argon2 never runs on the event loop.
"""

from __future__ import annotations

from typing import Literal

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel, ConfigDict, Field

from palette.api.auth import LocalTokens
from palette.api.errors import RateLimited, ServiceUnavailable, Unauthorized, openapi_responses
from palette.api.login_limits import FailedLogins, TooManyFailures, VerificationBusy, VerificationSlots
from palette.users import MAX_PASSWORD_CHARS, LocalUsers

LOGIN_PATH = "/auth/login"
LOGIN_TOKEN_TTL_SECONDS = 12 * 3600
MAX_USERNAME_CHARS = 128

_ERRORS = {
    400: "VALIDATION_ERROR: the body is not {username, password} (each a string, at most 128 and 1024 characters)",
    401: "INVALID_CREDENTIALS: no such user, or the wrong password (the same answer for both)",
    429: "RATE_LIMITED: too many failed sign-ins for this user name or address in the last minute; "
    "retry after Retry-After seconds",
    503: "SERVICE_UNAVAILABLE: every password check of the server is busy; retry after Retry-After seconds",
}


class InvalidCredentials(Unauthorized):
    code = "INVALID_CREDENTIALS"


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=MAX_USERNAME_CHARS)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)


class LoginReply(BaseModel):
    token: str = Field(description="A bearer token for every other route: `Authorization: Bearer <token>`")
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="Seconds until the token expires")
    user: str = Field(description="The signed-in user's id (the token's `sub`)")


def login_router(users: LocalUsers, tokens: LocalTokens, failures: FailedLogins, slots: VerificationSlots) -> Router:
    router = Router()

    @router.post(
        LOGIN_PATH,
        tags=["auth"],
        summary="Sign in with a local user's name and password (`palette user create`); no bearer token needed",
        responses=openapi_responses(200, _ERRORS, 429, 503),
    )
    def login(body: LoginRequest) -> LoginReply:
        address = router.current_event.raw_event.get("requestContext", {}).get("http", {}).get("sourceIp") or ""
        try:
            with slots.slot(), failures.attempt(body.username, address) as succeeded:
                if not users.verify(body.username, body.password):
                    raise InvalidCredentials("wrong user name or password")
                succeeded()
        except TooManyFailures as refused:
            raise RateLimited(
                f"too many failed sign-ins for this {refused.scope}; retry in {refused.retry_after} s",
                {"scope": refused.scope, "retry_after_seconds": refused.retry_after},
                headers={"Retry-After": str(refused.retry_after)},
            ) from None
        except VerificationBusy as busy:
            raise ServiceUnavailable(
                f"the server is checking too many passwords at once; retry in {busy.retry_after} s",
                {"retry_after_seconds": busy.retry_after},
                headers={"Retry-After": str(busy.retry_after)},
            ) from None
        token = tokens.issue(body.username, ttl_seconds=LOGIN_TOKEN_TTL_SECONDS)
        return LoginReply(token=token, expires_in=LOGIN_TOKEN_TTL_SECONDS, user=body.username)

    return router
