"""genservice's configuration: one frozen dataclass read from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from genservice.replies.settings import (
    ConfigError,
    env_addr,
    env_database_url,
    env_float,
    env_int,
    env_optional,
    env_str,
)

DEMO_LLM_DEFAULT_ADDR = "127.0.0.1:8181"


@dataclass(frozen=True)
class GenServiceConfig:
    addr: str = "127.0.0.1:50051"
    # None: the embedded Postgres in .data/
    database_url: str | None = field(default=None, repr=False)
    openai_base_url: str = f"http://{DEMO_LLM_DEFAULT_ADDR}/v1"
    openai_api_key: str | None = field(default=None, repr=False)
    openai_model: str = "demo"
    save_every_chars: int = 200
    # a save waits at most this long for more text; it also bounds how late followers elsewhere are
    save_max_delay: float = 0.05
    lease_seconds: float = 15.0
    shutdown_grace_seconds: float = 10.0
    model_idle_timeout: float = 60.0
    model_max_retries: int = 2
    max_reply_chars: int = 2_000_000
    max_content_chars: int = 32_000
    # Postgres connections at most; starts, ends and saves queue for them under a burst
    pool_size: int = 20

    @property
    def sweep_interval(self) -> float:
        return max(self.lease_seconds / 3, 0.2)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GenServiceConfig:
        demo_addr = env_addr(env, "DEMO_LLM_ADDR", DEMO_LLM_DEFAULT_ADDR)
        base_url = env_str(env, "OPENAI_BASE_URL", f"http://{demo_addr}/v1")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"OPENAI_BASE_URL must be an http(s) URL, got {base_url!r}")
        config = cls(
            addr=env_addr(env, "GENSERVICE_ADDR", cls.addr),
            database_url=env_database_url(env),
            openai_base_url=base_url,
            openai_api_key=env_optional(env, "OPENAI_API_KEY"),
            openai_model=env_str(env, "OPENAI_MODEL", cls.openai_model),
            save_every_chars=env_int(env, "SAVE_EVERY_CHARS", cls.save_every_chars),
            save_max_delay=env_float(env, "SAVE_MAX_DELAY_MS", cls.save_max_delay * 1000, minimum=1) / 1000,
            lease_seconds=env_float(env, "LEASE_SECONDS", cls.lease_seconds, minimum=0.5),
            shutdown_grace_seconds=env_float(env, "SHUTDOWN_GRACE_SECONDS", cls.shutdown_grace_seconds),
            model_idle_timeout=env_float(env, "MODEL_IDLE_TIMEOUT_SECONDS", cls.model_idle_timeout, minimum=0.1),
            model_max_retries=env_int(env, "MODEL_MAX_RETRIES", cls.model_max_retries, minimum=0),
            max_reply_chars=env_int(env, "MAX_REPLY_CHARS", cls.max_reply_chars),
            max_content_chars=env_int(env, "MAX_CONTENT_CHARS", cls.max_content_chars),
            pool_size=env_int(env, "GENSERVICE_POOL_SIZE", cls.pool_size),
        )
        return config
