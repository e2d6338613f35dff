"""The README's Python client (docs/examples/follow_reply.py), run as a new user would, against a real genservice."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.support.model_server import expected_reply

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "follow_reply.py"


async def run_example(target: str, *args: str) -> tuple[str, list[str]]:
    """The example's stdout, and its stderr's lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        *args,
        env={**os.environ, "GENSERVICE_TARGET": target},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode(), stderr.decode().split()


async def test_the_readme_shows_the_example_as_it_is():
    code = EXAMPLE.read_text(encoding="utf-8")
    body = code[code.index("import os") :]
    assert body in (ROOT / "README.md").read_text(encoding="utf-8")


async def test_the_example_starts_a_reply_then_follows_it(genservice_target: str):
    question = "what does the example print? [[len=700 chunk=7]]"
    text, status = await run_example(genservice_target, question)
    assert text == expected_reply(question)
    assert status[0] == "message" and status[-1] == "MESSAGE_STATUS_COMPLETE"

    followed, again = await run_example(genservice_target, "--follow", status[1])
    assert (followed, again) == (text, status)
