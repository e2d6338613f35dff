"""Internal callers authenticate: GENSERVICE_TOKEN on every GenerationService call; health and reflection open."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.upstream import bearer_metadata
from genservice.config import GenServiceConfig
from genservice.replies.settings import ConfigError
from genservice.server import running_service
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.genservice.conftest import TOKEN
from tests.support.gateway_harness import gateway_config, http_client, read_all, started_gateway
from tests.support.grpc_replies import collect
from tests.support.processes import free_port


@pytest.mark.parametrize("metadata", [(), bearer_metadata("wrong"), (("authorization", TOKEN),)])
async def test_a_call_without_the_token_is_unauthenticated(guarded, metadata):
    async with grpc.aio.insecure_channel(guarded) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.GetMessage(pb.GetMessageRequest(user_id="u", message_id=str(uuid.uuid4())), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as streaming:
            await collect(stub.StreamReply(pb.StreamReplyRequest(user_id="u", content="hi"), metadata=metadata))
    assert unary.value.code() == streaming.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "GENSERVICE_TOKEN" in (unary.value.details() or "")


async def test_health_and_reflection_stay_open_and_the_token_lets_a_call_in(guarded):
    async with grpc.aio.insecure_channel(guarded) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for answer in listing for s in answer.list_services_response.service]
        assert "genservice.v1.GenerationService" in names
        events = await collect(
            pb_grpc.GenerationServiceStub(channel).StreamReply(
                pb.StreamReplyRequest(user_id="u", content="hi [[len=50]]"), metadata=bearer_metadata(TOKEN)
            )
        )
    assert events[-1].finished.message.status == pb.MESSAGE_STATUS_COMPLETE


async def test_the_gateway_sends_the_token(database_url, guarded):
    config = gateway_config(database_url, guarded, genservice_token=TOKEN)
    async with started_gateway(config) as gateway, http_client(gateway) as client:
        async with client.stream("POST", "/v1/replies", json={"content": "hello [[len=40]]"}) as response:
            assert response.status_code == 200
            events = await read_all(response)
    assert events[-1].json()["message"]["status"] == "complete"


def test_without_a_token_only_a_loopback_address_is_accepted():
    assert GenServiceConfig.from_env({"GENSERVICE_ADDR": "[::1]:5000"}).token is None
    assert GenServiceConfig.from_env({"GENSERVICE_ADDR": "0.0.0.0:5000", "GENSERVICE_TOKEN": TOKEN}).token == TOKEN
    with pytest.raises(ConfigError, match="GENSERVICE_TOKEN"):
        GenServiceConfig.from_env({"GENSERVICE_ADDR": "0.0.0.0:5000"})
    with pytest.raises(ConfigError, match="GENSERVICE_TOKEN"):
        GenServiceConfig.from_env({"GENSERVICE_TOKEN": " \n"})
    assert TOKEN not in repr(GenServiceConfig.from_env({"GENSERVICE_TOKEN": TOKEN}))


def test_genservice_refuses_to_start_on_a_public_address_without_a_token():
    env = {k: v for k, v in os.environ.items() if k != "GENSERVICE_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "genservice.server"],
        env={**env, "GENSERVICE_ADDR": f"0.0.0.0:{free_port()}"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "GENSERVICE_TOKEN" in done.stderr and "Traceback" not in done.stderr


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1: (ca, cert, key), made with the openssl command."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30, cwd=directory)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=tests CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
async def test_tls_between_the_gateway_and_genservice(genservice_config, database_url, tmp_path):
    ca, cert, key = make_certificates(tmp_path)
    config = dataclasses.replace(genservice_config, token=TOKEN, tls_cert=str(cert), tls_key=str(key))
    async with running_service(config) as service:
        async with grpc.aio.insecure_channel(service.target) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        gateway = gateway_config(database_url, service.target, genservice_token=TOKEN, genservice_tls_ca=str(ca))
        async with started_gateway(gateway) as running, http_client(running) as client:
            assert (await client.get("/healthz")).status_code == 200
            async with client.stream("POST", "/v1/replies", json={"content": "secret [[len=40]]"}) as response:
                events = await read_all(response)
    assert events[-1].json()["message"]["status"] == "complete"
