"""The real Vercel AI SDK client, driven by `tests/aisdk/driver.mjs`: setting it up, and running a scenario.

`python -m tests.support.aisdk` is a `make test` step, as the browser's is: it installs Node
(Debian's nodejs and npm) where it is missing or too old and this machine allows it, then
`npm ci` in tests/aisdk when its node_modules are missing or older than the lockfile. It never
fails the run: without them the chat tests skip with a reason, unless REQUIRE_NODE is set (CI).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.support.browser import apt_get

log = logging.getLogger("aisdk-setup")

PROJECT = Path(__file__).resolve().parents[1] / "aisdk"
DRIVER = PROJECT / "driver.mjs"
LOCKFILE = PROJECT / "package-lock.json"
# npm ci writes this copy of the lockfile last, so it dates the install
INSTALLED = PROJECT / "node_modules" / ".package-lock.json"
MIN_NODE = 18


def node_major() -> int | None:
    """The major version of `node` on PATH; None when there is none."""
    node = shutil.which("node")
    if node is None:
        return None
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    match = re.match(r"v(\d+)\.", version.strip())
    return int(match.group(1)) if match else None


def packages_installed() -> bool:
    return INSTALLED.exists() and INSTALLED.stat().st_mtime >= LOCKFILE.stat().st_mtime


def missing() -> str | None:
    """Why the driver cannot run here, or None when it can."""
    major = node_major()
    if major is None or major < MIN_NODE:
        return f"Node {MIN_NODE} or later is not installed (apt-get install nodejs npm, then make test)"
    if not packages_installed():
        return f"the driver's packages are not installed: npm ci --prefix {PROJECT}"
    return None


def ensure_node() -> None:
    major = node_major()
    if major is not None and major >= MIN_NODE:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log.warning("Node %d+ is missing and cannot be installed here: the chat tests will be skipped", MIN_NODE)
        return
    log.warning("installing Debian's nodejs and npm for the chat tests")
    try:
        apt_get("update", "-qq")
        apt_get("install", "-y", "-qq", "nodejs", "npm")
    except (subprocess.SubprocessError, OSError) as exc:
        log.warning("could not install Node (%s): the chat tests will be skipped", exc)


def ensure_packages() -> None:
    npm = shutil.which("npm")
    if packages_installed() or npm is None:
        return
    log.warning("npm ci in %s", PROJECT)
    try:
        subprocess.run([npm, "ci", "--prefix", str(PROJECT), "--no-audit", "--no-fund"], check=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        log.warning("npm ci failed (%s): the chat tests will be skipped", exc)


async def run_driver(scenario: str, args: dict[str, Any], seconds: float = 60) -> dict[str, Any]:
    """One scenario's report: what the client saw. The process is killed if it outlives `seconds`."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(DRIVER),
        scenario,
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(seconds):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, f"driver exited {process.returncode}: {stderr.decode()[-2000:]}"
    report: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    assert not report["timedOut"], f"the scenario timed out: {json.dumps(report)[:4000]}"
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[aisdk-setup] %(message)s")
    ensure_node()
    ensure_packages()
