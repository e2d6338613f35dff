"""genservice's configuration: one frozen dataclass read from the environment."""

from __future__ import annotations

import ipaddress
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

DEMO_LLM_DEFAULT_ADDR = "127.0.0.1:8181"
# replies one process runs at once: what one core carried with latency still bounded (see README)
DEFAULT_MAX_ACTIVE_REPLIES = 500


@dataclass(frozen=True)
class GenServiceConfig:
    addr: str = "127.0.0.1:50051"
    # where gateways dial this process for a reply's live text, kept with each lease; None: the bound address
    advertise_addr: str | None = None
    # None: every caller is trusted, allowed on a loopback address only
    token: str | None = field(default=None, repr=False)
    # PEM files: both set, genservice serves TLS; neither, plaintext
    tls_cert: str | None = None
    tls_key: str | None = None
    # None: the embedded Postgres in .data/
    database_url: str | None = field(default=None, repr=False)
    openai_base_url: str = f"http://{DEMO_LLM_DEFAULT_ADDR}/v1"
    openai_api_key: str | None = field(default=None, repr=False)
    openai_model: str = "demo"
    save_every_chars: int = 200
    # a save waits at most this long for more text; it also bounds how late followers elsewhere are
    save_max_delay: float = 0.05
    # past this many replies running in the process, each reply's deltas go out at most once per
    # busy_delta_interval, merged: a caller's message costs about the same whatever its length
    busy_replies: int = 4
    busy_delta_interval: float = 0.04
    # and saves wait up to this long for more text (SAVE_EVERY_CHARS still saves sooner)
    busy_save_delay: float = 0.25
    lease_seconds: float = 15.0
    shutdown_grace_seconds: float = 10.0
    model_idle_timeout: float = 60.0
    model_max_retries: int = 2
    max_reply_chars: int = 2_000_000
    max_content_chars: int = 32_000
    # STREAMING replies one user may have at once (0: no limit)
    max_active_replies_per_user: int = 8
    # replies this process runs at once
    max_active_replies: int = DEFAULT_MAX_ACTIVE_REPLIES
    # while the event loop runs later than this (seconds; 0: never), new replies are refused: the process
    # is past what its core carries, and one more reply would make every reader here later still
    max_loop_lag: float = 0.25
    # models a request may name; {"*"}: any; empty: openai_model alone
    allowed_models: frozenset[str] = frozenset()

    def allows(self, model: str) -> bool:
        return "*" in self.allowed_models or model in (self.allowed_models or {self.openai_model})

    # Postgres connections at most; starts, ends and saves queue for them under a burst
    pool_size: int = 20

    @property
    def sweep_interval(self) -> float:
        return max(self.lease_seconds / 3, 0.2)

    @property
    def idle_in_transaction_timeout(self) -> float:
        """How long Postgres lets one of our sessions sit in a transaction between statements before ending it: a
        process paused mid-transaction holds its row locks, which other replicas' sweeps wait on, no longer."""
        return self.lease_seconds

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GenServiceConfig:
        demo_addr = env_addr(env, "DEMO_LLM_ADDR", DEMO_LLM_DEFAULT_ADDR)
        base_url = env_str(env, "OPENAI_BASE_URL", f"http://{demo_addr}/v1")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"OPENAI_BASE_URL must be an http(s) URL, got {base_url!r}")
        config = cls(
            addr=env_addr(env, "GENSERVICE_ADDR", cls.addr),
            advertise_addr=env_optional_addr(env, "GENSERVICE_ADVERTISE_ADDR"),
            database_url=env_database_url(env),
            openai_base_url=base_url,
            openai_api_key=env_optional(env, "OPENAI_API_KEY"),
            openai_model=env_str(env, "OPENAI_MODEL", cls.openai_model),
            save_every_chars=env_int(env, "SAVE_EVERY_CHARS", cls.save_every_chars),
            save_max_delay=env_float(env, "SAVE_MAX_DELAY_MS", cls.save_max_delay * 1000, minimum=1) / 1000,
            busy_replies=env_int(env, "BUSY_REPLIES", cls.busy_replies, minimum=0),
            busy_delta_interval=env_float(env, "BUSY_DELTA_INTERVAL_MS", cls.busy_delta_interval * 1000) / 1000,
            busy_save_delay=env_float(env, "BUSY_SAVE_DELAY_MS", cls.busy_save_delay * 1000, minimum=1) / 1000,
            lease_seconds=env_float(env, "LEASE_SECONDS", cls.lease_seconds, minimum=0.5),
            shutdown_grace_seconds=env_float(env, "SHUTDOWN_GRACE_SECONDS", cls.shutdown_grace_seconds),
            model_idle_timeout=env_float(env, "MODEL_IDLE_TIMEOUT_SECONDS", cls.model_idle_timeout, minimum=0.1),
            model_max_retries=env_int(env, "MODEL_MAX_RETRIES", cls.model_max_retries, minimum=0),
            max_reply_chars=env_int(env, "MAX_REPLY_CHARS", cls.max_reply_chars),
            max_content_chars=env_int(env, "MAX_CONTENT_CHARS", cls.max_content_chars),
            token=env_secret(env, "GENSERVICE_TOKEN"),
            tls_cert=env_optional(env, "GENSERVICE_TLS_CERT"),
            tls_key=env_optional(env, "GENSERVICE_TLS_KEY"),
            max_active_replies_per_user=env_int(
                env, "MAX_ACTIVE_REPLIES_PER_USER", cls.max_active_replies_per_user, minimum=0
            ),
            max_active_replies=env_int(env, "MAX_ACTIVE_REPLIES", cls.max_active_replies),
            max_loop_lag=env_float(env, "MAX_LOOP_LAG_MS", cls.max_loop_lag * 1000) / 1000,
            allowed_models=env_models(env, "ALLOWED_MODELS"),
            pool_size=env_int(env, "GENSERVICE_POOL_SIZE", cls.pool_size),
        )
        if (config.tls_cert is None) != (config.tls_key is None):
            raise ConfigError("GENSERVICE_TLS_CERT and GENSERVICE_TLS_KEY go together: set both, or neither")
        for name, path in (("GENSERVICE_TLS_CERT", config.tls_cert), ("GENSERVICE_TLS_KEY", config.tls_key)):
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{name}: no such file {path!r}")
        if config.token is None and not is_loopback(config.addr):
            raise ConfigError(
                f"GENSERVICE_ADDR {config.addr} is reachable from other machines: set GENSERVICE_TOKEN,"
                " or listen on a loopback address such as 127.0.0.1"
            )
        return config


def env_optional_addr(env: Mapping[str, str], name: str) -> str | None:
    return env_addr(env, name, "") if env_optional(env, name) is not None else None


def env_models(env: Mapping[str, str], name: str) -> frozenset[str]:
    """A comma-separated list of model names, or `*` for any; unset: empty (OPENAI_MODEL alone)."""
    raw = env.get(name, "")
    names = frozenset(part.strip() for part in raw.split(",") if part.strip())
    if "*" in names and len(names) > 1:
        raise ConfigError(f"{name}: `*` (any model) cannot be mixed with names, got {raw!r}")
    return names


def is_loopback(addr: str) -> bool:
    host = addr.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
