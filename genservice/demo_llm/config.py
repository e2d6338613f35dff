"""demo-llm's settings, from its environment."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


def parse_addr(value: str) -> tuple[str, int]:
    """Split `host:port` (or `[v6]:port`) and check the port."""
    host, sep, port_text = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"address must look like HOST:PORT with a port in 0..65535, got {value!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class DemoLLMConfig:
    host: str = "127.0.0.1"
    port: int = 8181
    delay: float = 0.05
    chunk_chars: int = 4

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DemoLLMConfig:
        host, port = parse_addr(env.get("DEMO_LLM_ADDR", f"{cls.host}:{cls.port}"))
        delay_text = env.get("DEMO_LLM_DELAY", str(cls.delay))
        chunk_text = env.get("DEMO_LLM_CHUNK", str(cls.chunk_chars))
        try:
            delay = float(delay_text)
        except ValueError:
            delay = math.nan
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"DEMO_LLM_DELAY must be a number of seconds >= 0, got {delay_text!r}")
        if not chunk_text.strip().isdigit() or int(chunk_text) < 1:
            raise ValueError(f"DEMO_LLM_CHUNK must be a whole number of characters >= 1, got {chunk_text!r}")
        return cls(host=host, port=port, delay=delay, chunk_chars=int(chunk_text))
