"""The read side's pure pieces, without a database: notices and page tokens."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from genservice.replies.errors import InvalidArgument
from genservice.replies.notices import MAX_INLINE_TEXT_BYTES, Notice, text_after
from genservice.replies.paging import decode_token, encode_token, page_size
from genservice.replies.records import Status


def test_a_notice_travels_as_small_json_and_back():
    notice = Notice("m1", Status.STREAMING, 12, 7, "héllo")
    back = Notice.decode(notice.encode())
    assert back is not None
    assert (back.message_id, back.status, back.end, back.start, back.text) == ("m1", "streaming", 12, 7, "héllo")
    assert back.sent_at is not None
    big = Notice("m1", Status.STREAMING, 5000, 0, "x" * (MAX_INLINE_TEXT_BYTES + 1))
    decoded = Notice.decode(big.encode())
    assert decoded is not None and decoded.text is None and decoded.end == 5000


@pytest.mark.parametrize("payload", ["", "not json", "[]", '{"m": "x"}', '{"m": 1, "s": "streaming", "e": "x"}'])
def test_a_foreign_payload_on_the_channel_is_ignored(payload):
    assert Notice.decode(payload) is None


def test_text_after_joins_contiguous_notices_and_skips_what_was_sent():
    notices = [Notice("m", Status.STREAMING, 10, 0, "0123456789"), Notice("m", Status.STREAMING, 15, 10, "abcde")]
    assert text_after(notices, 0) == "0123456789abcde"
    assert text_after(notices, 4) == "456789abcde"
    assert text_after(notices, 12) == "cde"
    assert text_after(notices, 15) == ""


def test_text_after_sends_the_follower_to_postgres_when_in_doubt():
    assert text_after([Notice("m", Status.STREAMING, 20, 15, "zzzzz")], 10) is None  # a gap
    assert text_after([Notice("m", Status.STREAMING, 20)], 10) is None  # no inline text
    assert text_after([Notice("m", Status.COMPLETE, 20)], 20) is None  # the end: read the message
    assert text_after([Notice("m", Status.STREAMING, 20, cancel_requested=True)], 20) == ""


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
