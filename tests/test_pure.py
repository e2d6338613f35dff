"""The pure pieces, without a database: cutting saves, what can be stored, notices, page tokens."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from genservice.errors import InvalidArgument
from genservice.notices import MAX_INLINE_TEXT_BYTES, Notice, text_after
from genservice.paging import decode_token, encode_token, page_size
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


def test_a_notice_travels_as_small_json_and_back():
    notice = Notice("m1", "streaming", 12, 7, "héllo")
    back = Notice.decode(notice.encode())
    assert back is not None
    assert (back.message_id, back.status, back.end, back.start, back.text) == ("m1", "streaming", 12, 7, "héllo")
    assert back.sent_at is not None
    big = Notice("m1", "streaming", 5000, 0, "x" * (MAX_INLINE_TEXT_BYTES + 1))
    decoded = Notice.decode(big.encode())
    assert decoded is not None and decoded.text is None and decoded.end == 5000


@pytest.mark.parametrize("payload", ["", "not json", "[]", '{"m": "x"}', '{"m": 1, "s": "streaming", "e": "x"}'])
def test_a_foreign_payload_on_the_channel_is_ignored(payload):
    assert Notice.decode(payload) is None


def test_text_after_joins_contiguous_notices_and_skips_what_was_sent():
    notices = [Notice("m", "streaming", 10, 0, "0123456789"), Notice("m", "streaming", 15, 10, "abcde")]
    assert text_after(notices, 0) == "0123456789abcde"
    assert text_after(notices, 4) == "456789abcde"
    assert text_after(notices, 12) == "cde"
    assert text_after(notices, 15) == ""


def test_text_after_sends_the_follower_to_postgres_when_in_doubt():
    assert text_after([Notice("m", "streaming", 20, 15, "zzzzz")], 10) is None  # a gap
    assert text_after([Notice("m", "streaming", 20)], 10) is None  # no inline text
    assert text_after([Notice("m", "complete", 20)], 20) is None  # the end: read the message
    assert text_after([Notice("m", "streaming", 20, cancel_requested=True)], 20) == ""


def test_page_tokens_round_trip_and_bad_ones_are_invalid():
    moment = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    token = encode_token(moment, "6f1c7f3e-6a43-4c0e-9d59-8c2b5b1d2f10")
    assert decode_token(token) == (moment, "6f1c7f3e-6a43-4c0e-9d59-8c2b5b1d2f10")
    assert decode_token("") is None
    for bad in ("%%%", "bm90IGpzb24", encode_token(moment, "not-a-uuid")):
        with pytest.raises(InvalidArgument):
            decode_token(bad)
    assert page_size(0) == 20 and page_size(5) == 5 and page_size(10_000) == 100
    with pytest.raises(InvalidArgument):
        page_size(-1)
