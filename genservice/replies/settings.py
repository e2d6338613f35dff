"""Reading typed settings from an environment mapping, with a clear message for a bad value."""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict


class ConfigError(ValueError):
    """A setting has a value the program cannot use."""


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, "").strip() or default


def env_optional(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


def env_secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret: None when unset or empty; only blanks (spaces, a newline) is a mistake, never a silent "no secret"."""
    raw = env.get(name, "")
    if raw and not raw.strip():
        raise ConfigError(f"{name} holds only blanks: give it a value, or unset it")
    return raw.strip() or None


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_addr(env: Mapping[str, str], name: str, default: str) -> str:
    value = env_str(env, name, default)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must be host:port, got {value!r}")
    return value


def env_database_url(env: Mapping[str, str]) -> str | None:
    """DATABASE_URL: a postgresql:// URL or a libpq connection string; None when unset."""
    url = env_optional(env, "DATABASE_URL")
    if url is not None:
        try:
            conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            # the parser's message could hold the password: say only what is wrong
            raise ConfigError("DATABASE_URL is not a valid postgresql:// URL or connection string") from None
    return url
