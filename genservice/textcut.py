"""Cutting text into saves: pure, so it is tested without a database."""

from __future__ import annotations


def cut_pieces(text: str, start: int, size: int) -> list[tuple[int, str]]:
    """`text`, which begins at offset `start`, as (offset, piece) pairs of at most `size` characters."""
    return [(start + i, text[i : i + size]) for i in range(0, len(text), size)]
