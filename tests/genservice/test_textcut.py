"""Cutting text into saves and what text can be stored: pure, without a database."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from genservice.textcut import cut_pieces, first_unstorable


@given(text=st.text(), start=st.integers(min_value=0, max_value=10**6), size=st.integers(min_value=1, max_value=300))
def test_pieces_cover_the_text_exactly_each_at_most_size(text, start, size):
    pieces = cut_pieces(text, start, size)
    assert "".join(piece for _, piece in pieces) == text
    assert all(0 < len(piece) <= size for _, piece in pieces)
    offsets = [offset for offset, _ in pieces]
    assert offsets == [start + sum(len(p) for _, p in pieces[:i]) for i in range(len(pieces))]


def test_nul_and_lone_surrogates_cannot_be_stored():
    assert first_unstorable("fine: é 中 🚀") is None
    assert first_unstorable("ab\x00cd") == 2
    assert first_unstorable("ab\ud800") == 2
