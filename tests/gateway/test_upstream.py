"""GENSERVICE_TARGET: one address as grpc takes it, or several spread round-robin."""

from __future__ import annotations

import pytest

from gateway.upstream import CHANNEL_OPTIONS, channel_target
from genservice.replies.settings import ConfigError


def test_one_target_is_used_as_it_is() -> None:
    assert channel_target("localhost:50051") == ("localhost:50051", CHANNEL_OPTIONS)


def test_several_targets_share_the_calls_round_robin() -> None:
    target, options = channel_target("127.0.0.1:50051, 127.0.0.1:50052")
    assert target == "ipv4:127.0.0.1:50051,127.0.0.1:50052"
    assert ("grpc.lb_policy_name", "round_robin") in options
    assert channel_target("[::1]:1,[::1]:2")[0] == "ipv6:[::1]:1,[::1]:2"


def test_several_targets_must_be_ip_addresses() -> None:
    with pytest.raises(ConfigError, match="ip:port"):
        channel_target("127.0.0.1:50051,genservice:50052")
