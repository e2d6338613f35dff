"""Who is asking: the `sub` of an HS256 JWT, from `Authorization: Bearer` or the `access_token` cookie.

Without a secret the gateway runs in development mode: every request is the one user `dev`.
"""

from __future__ import annotations

import logging
import warnings

import jwt
from starlette.requests import HTTPConnection

from gateway.errors import unauthenticated

log = logging.getLogger(__name__)

DEV_USER = "dev"
COOKIE = "access_token"
MAX_USER_ID_CHARS = 200
ALGORITHMS = ["HS256"]


class Authenticator:
    def __init__(self, secret: str | None) -> None:
        self._secret = secret

    @property
    def development(self) -> bool:
        return self._secret is None

    def user_id(self, request: HTTPConnection) -> str:
        """The authenticated user id, or a 401 ApiError. The token itself is never logged or echoed."""
        if self._secret is None:
            return DEV_USER
        token = bearer_token(request)
        if token is None:
            raise unauthenticated("a token is required: Authorization: Bearer <jwt> or the access_token cookie")
        return self._verified_subject(token, self._secret)

    @staticmethod
    def _verified_subject(token: str, secret: str) -> str:
        try:
            with warnings.catch_warnings():
                # a short secret is reported once at start, not on every request
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                claims = jwt.decode(token, secret, algorithms=ALGORITHMS, options={"require": ["sub"]})
        except jwt.ExpiredSignatureError:
            raise unauthenticated("the token has expired") from None
        except jwt.InvalidTokenError:
            raise unauthenticated("the token is not valid") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_USER_ID_CHARS:
            raise unauthenticated("the token's sub is not a valid user id")
        return subject


def bearer_token(request: HTTPConnection) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated("the Authorization header must be: Bearer <jwt>")
        return token.strip()
    return request.cookies.get(COOKIE) or None
