"""Who is asking: the `sub` of an HS256 JWT, from `Authorization: Bearer` or the `access_token` cookie.

Without a secret the gateway runs in development mode: every request is the one user `dev`.
"""

from __future__ import annotations

import logging
import warnings

import jwt
from starlette.requests import HTTPConnection

from gateway.errors import forbidden, unauthenticated

log = logging.getLogger(__name__)

DEV_USER = "dev"
COOKIE = "access_token"
MAX_USER_ID_CHARS = 200
ALGORITHMS = ["HS256"]


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Authenticator:
    def __init__(
        self,
        secret: str | None,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        allowed_origins: frozenset[str] = frozenset(),
    ) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        # besides the gateway's own origin
        self._allowed_origins = allowed_origins

    @property
    def development(self) -> bool:
        return self._secret is None

    def user_id(self, request: HTTPConnection) -> str:
        """The authenticated user id, or a 401 ApiError. The token itself is never logged or echoed."""
        if self._secret is None:
            return DEV_USER
        token, from_cookie = bearer_token(request)
        if token is None:
            raise unauthenticated("a token is required: Authorization: Bearer <jwt> or the access_token cookie")
        subject = self._verified_subject(token, self._secret)
        if from_cookie and request.scope.get("method", "GET") not in SAFE_METHODS:
            self._check_origin(request)
        return subject

    def _check_origin(self, request: HTTPConnection) -> None:
        """A cookie rides along with any site's request (CSRF): a change needs an Origin we trust."""
        origin = (request.headers.get("origin") or "").rstrip("/").lower()
        own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
        if not origin or (origin != own and origin not in self._allowed_origins):
            raise forbidden(
                "a request authenticated by cookie that changes something must come from an allowed origin"
                " (GATEWAY_ALLOWED_ORIGINS); or send the token as Authorization: Bearer"
            )

    def _verified_subject(self, token: str, secret: str) -> str:
        required = ["sub", "exp"] + (["iss"] if self._issuer else []) + (["aud"] if self._audience else [])
        try:
            with warnings.catch_warnings():
                # a short secret is reported once at start, not on every request
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                claims = jwt.decode(
                    token,
                    secret,
                    algorithms=ALGORITHMS,
                    issuer=self._issuer,
                    audience=self._audience,
                    options={"require": required, "verify_aud": self._audience is not None},
                )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("the token has expired") from None
        except jwt.MissingRequiredClaimError as err:
            raise unauthenticated(f"the token has no {err.claim!r} claim") from None
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError):
            raise unauthenticated("the token was not issued for this service") from None
        except jwt.InvalidTokenError:
            raise unauthenticated("the token is not valid") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_USER_ID_CHARS:
            raise unauthenticated("the token's sub is not a valid user id")
        return subject


def bearer_token(request: HTTPConnection) -> tuple[str | None, bool]:
    """The token, and whether it came from the cookie (which a browser sends on any site's behalf)."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated("the Authorization header must be: Bearer <jwt>")
        return token.strip(), False
    cookie = request.cookies.get(COOKIE) or None
    return cookie, cookie is not None
