"""The gateway's configuration: one frozen dataclass read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from genservice.replies.settings import (
    ConfigError,
    env_addr,
    env_database_url,
    env_float,
    env_int,
    env_optional,
    env_secret,
    env_str,
)

# RFC 7518 §3.2: an HS256 key has at least 256 bits
MIN_SECRET_BYTES = 32


def env_origins(env: Mapping[str, str], name: str) -> frozenset[str]:
    """Comma-separated origins such as https://chat.example.com, compared as a browser sends them."""
    origins = set()
    for part in env.get(name, "").split(","):
        origin = part.strip().rstrip("/").lower()
        if not origin:
            continue
        scheme, sep, host = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not host or "/" in host:
            raise ConfigError(f"{name}: {part.strip()!r} is not an origin such as https://chat.example.com")
        origins.add(origin)
    return frozenset(origins)


@dataclass(frozen=True)
class GatewayConfig:
    addr: str = "127.0.0.1:8080"
    genservice_target: str = "127.0.0.1:50051"
    # None: the embedded Postgres in .data/
    database_url: str | None = field(default=None, repr=False)
    # None: development mode, every request is the user `dev`
    jwt_secret: str | None = field(default=None, repr=False)
    # sent to genservice on every call; None: genservice runs without one (loopback only)
    genservice_token: str | None = field(default=None, repr=False)
    # PEM file of the CA that signed genservice's certificate: set, the channel uses TLS
    genservice_tls_ca: str | None = None
    # when set, a token's iss / aud must match
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # origins besides the gateway's own that may make cookie-authenticated POSTs
    allowed_origins: frozenset[str] = frozenset()
    max_body_bytes: int = 256 * 1024
    # a request's headers must arrive within this, and a JSON body within body_timeout_seconds
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    # open connections at most (streams included); past it uvicorn answers 503
    max_connections: int = 10_000
    # replies starting at once (sent, no first event yet); past it a start is refused with 503 (0: no limit)
    max_pending_starts: int = 64
    # a longer user message is refused here with 413 (genservice reads the same variable)
    max_content_chars: int = 32_000
    # an idle stream gets a `: ping` comment this often
    ping_seconds: float = 15.0
    # on a first SIGTERM/SIGINT open streams get this long to end by themselves, then they are ended cleanly
    shutdown_grace_seconds: float = 10.0
    # deadline of a unary call to genservice, and of a stream's first event
    genservice_timeout_seconds: float = 10.0
    # a live reply's owner that does not start a follower's stream within this is passed over for Postgres
    owner_start_seconds: float = 0.5
    # bound of each of the health checks (Postgres, genservice)
    health_timeout_seconds: float = 2.0
    pool_size: int = 10
    # Postgres application_name of the pool; the listener is "<name>-listener"
    name: str = "gateway"

    @property
    def host(self) -> str:
        return self.addr.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.addr.rpartition(":")[2])

    @property
    def listener_name(self) -> str:
        return f"{self.name}-listener"

    @property
    def short_secret(self) -> bool:
        return self.jwt_secret is not None and len(self.jwt_secret.encode()) < MIN_SECRET_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewayConfig:
        config = cls(
            addr=env_addr(env, "GATEWAY_ADDR", cls.addr),
            genservice_target=env_str(env, "GENSERVICE_TARGET", cls.genservice_target),
            database_url=env_database_url(env),
            jwt_secret=env_secret(env, "GATEWAY_JWT_SECRET"),
            genservice_token=env_secret(env, "GENSERVICE_TOKEN"),
            genservice_tls_ca=env_optional(env, "GENSERVICE_TLS_CA"),
            jwt_issuer=env_optional(env, "GATEWAY_JWT_ISSUER"),
            jwt_audience=env_optional(env, "GATEWAY_JWT_AUDIENCE"),
            allowed_origins=env_origins(env, "GATEWAY_ALLOWED_ORIGINS"),
            max_body_bytes=env_int(env, "MAX_BODY_BYTES", cls.max_body_bytes),
            header_timeout_seconds=env_float(
                env, "GATEWAY_HEADER_TIMEOUT_SECONDS", cls.header_timeout_seconds, minimum=0.1
            ),
            body_timeout_seconds=env_float(env, "GATEWAY_BODY_TIMEOUT_SECONDS", cls.body_timeout_seconds, minimum=0.1),
            max_connections=env_int(env, "GATEWAY_MAX_CONNECTIONS", cls.max_connections),
            max_pending_starts=env_int(env, "GATEWAY_MAX_PENDING_STARTS", cls.max_pending_starts, minimum=0),
            max_content_chars=env_int(env, "MAX_CONTENT_CHARS", cls.max_content_chars),
            ping_seconds=env_float(env, "PING_SECONDS", cls.ping_seconds, minimum=0.01),
            shutdown_grace_seconds=env_float(env, "SHUTDOWN_GRACE_SECONDS", cls.shutdown_grace_seconds),
            genservice_timeout_seconds=env_float(
                env, "GENSERVICE_TIMEOUT_SECONDS", cls.genservice_timeout_seconds, minimum=0.1
            ),
            owner_start_seconds=env_float(env, "OWNER_START_SECONDS", cls.owner_start_seconds, minimum=0.01),
            health_timeout_seconds=env_float(env, "HEALTH_TIMEOUT_SECONDS", cls.health_timeout_seconds, minimum=0.1),
            pool_size=env_int(env, "GATEWAY_POOL_SIZE", cls.pool_size),
            name=env_str(env, "GATEWAY_NAME", cls.name),
        )
        if config.genservice_tls_ca is not None and not os.path.isfile(config.genservice_tls_ca):
            raise ConfigError(f"GENSERVICE_TLS_CA: no such file {config.genservice_tls_ca!r}")
        if len(config.name) > 40 or not config.name.isprintable():
            raise ConfigError(f"GATEWAY_NAME must be at most 40 printable characters, got {config.name!r}")
        return config
