"""The read side's pure pieces, without a database: notices and page tokens."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from genservice.replies.errors import InvalidArgument
from genservice.replies.notices import Notice, says_more_than
from genservice.replies.paging import decode_seq_token, decode_token, encode_seq_token, encode_token, page_size
from genservice.replies.records import Status

ID = "6f1c7f3e-6a43-4c0e-9d59-8c2b5b1d2f10"


def test_a_notice_travels_as_small_json_without_text_and_back():
    notice = Notice(ID, Status.STREAMING, 12, cancel_requested=True)
    payload = notice.encode()
    assert set(json.loads(payload)) == {"m", "s", "e", "ts", "c"}
    back = Notice.decode(payload)
    assert back is not None
    assert (back.message_id, back.status, back.end, back.cancel_requested) == (ID, Status.STREAMING, 12, True)
    assert back.sent_at is not None


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json",
        "[]",
        "[" * 100_000,
        '{"m": "x"}',
        f'{{"m": "{ID}", "s": "streaming", "e": "x", "ts": 1}}',
        f'{{"m": "{ID}", "s": "streaming", "e": true, "ts": 1}}',
        f'{{"m": "{ID}", "s": "streaming", "e": -1, "ts": 1}}',
        f'{{"m": "{ID}", "s": "streaming", "e": 1e400, "ts": 1}}',
        f'{{"m": "{ID}", "s": "done", "e": 1, "ts": 1}}',
        f'{{"m": "{ID.upper()}", "s": "streaming", "e": 1, "ts": 1}}',
        f'{{"m": "{ID}", "s": "streaming", "e": 1, "ts": NaN}}',
        f'{{"m": "{ID}", "s": "streaming", "e": 1, "ts": 1, "c": 2}}',
        f'{{"m": "{ID}", "s": "streaming", "e": 1, "ts": 1, "t": "injected text", "o": 0}}',
    ],
)
def test_anything_but_an_exact_notice_is_dropped(payload):
    assert Notice.decode(payload) is None


def test_a_follower_reads_postgres_only_when_a_notice_claims_something_new():
    assert not says_more_than([Notice(ID, Status.STREAMING, 10)], 10)
    assert says_more_than([Notice(ID, Status.STREAMING, 11)], 10)
    assert says_more_than([Notice(ID, Status.COMPLETE, 3)], 10)


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


def test_message_page_tokens_round_trip_and_bad_ones_are_invalid():
    assert decode_seq_token(encode_seq_token(41)) == 41
    assert decode_seq_token("") == 0
    for bad in ("%%%", encode_token(datetime(2026, 1, 1, tzinfo=UTC), ID), "eyJhZnRlciI6IC0xfQ"):
        with pytest.raises(InvalidArgument):
            decode_seq_token(bad)
