"""The README's Python client (docs/examples/follow_reply.py), run as a new user would, against a real genservice."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.genservice.conftest import TOKEN
from tests.support.model_server import expected_reply
from tests.support.processes import run_command

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "follow_reply.py"


async def run_example(target: str, *args: str, token: str | None = None) -> tuple[str, list[str]]:
    """The example's stdout, and its stderr's lines; `token`: GENSERVICE_TOKEN in its environment."""
    env = {name: value for name, value in os.environ.items() if name != "GENSERVICE_TOKEN"}
    finished = await run_command(
        sys.executable,
        str(EXAMPLE),
        *args,
        env={**env, "GENSERVICE_TARGET": target, **({} if token is None else {"GENSERVICE_TOKEN": token})},
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stdout, finished.stderr.split()


async def test_the_readme_shows_the_example_as_it_is():
    code = EXAMPLE.read_text(encoding="utf-8")
    body = code[code.index("import os") :]
    assert body in (ROOT / "README.md").read_text(encoding="utf-8")


async def test_the_example_starts_a_reply_then_follows_it(genservice_target: str):
    await start_then_follow(genservice_target, token=None)


async def test_the_example_sends_genservice_token_from_its_environment(guarded: str):
    await start_then_follow(guarded, token=TOKEN)


async def start_then_follow(target: str, token: str | None) -> None:
    question = "what does the example print? [[len=700 chunk=7]]"
    text, status = await run_example(target, question, token=token)
    assert text == expected_reply(question)
    assert status[0] == "message" and status[-1] == "MESSAGE_STATUS_COMPLETE"

    followed, again = await run_example(target, "--follow", status[1], token=token)
    assert (followed, again) == (text, status)
