"""Cutting text into saves, and what text can be saved at all: pure, so tested without a database."""

from __future__ import annotations


def cut_pieces(text: str, start: int, size: int) -> list[tuple[int, str]]:
    """`text`, which begins at offset `start`, as (offset, piece) pairs of at most `size` characters."""
    return [(start + i, text[i : i + size]) for i in range(0, len(text), size)]


def first_unstorable(text: str) -> int | None:
    """Where `text` first holds a character Postgres text cannot store (NUL, a lone surrogate), if anywhere."""
    for index, char in enumerate(text):
        if char == "\x00" or "\ud800" <= char <= "\udfff":
            return index
    return None
