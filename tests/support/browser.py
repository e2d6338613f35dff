"""`make test` step: install Debian's chromium for the page test where this machine allows it.

Never fails the run: without chromium the page test skips with a reason that says how to run it
(CI sets REQUIRE_BROWSER=1, which turns that skip into a failure).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

log = logging.getLogger("browser-setup")

CHROMIUM = "/usr/bin/chromium"


def apt_get(*args: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", *args], check=True, timeout=900, stdout=subprocess.DEVNULL, env=env)


def ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log.warning("chromium is missing and cannot be installed here: the page test will be skipped")
        return
    log.warning("installing Debian's chromium for the page test")
    try:
        apt_get("update", "-qq")
        apt_get("install", "-y", "-qq", "chromium")
    except (subprocess.SubprocessError, OSError) as exc:
        log.warning("could not install chromium (%s): the page test will be skipped", exc)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[browser-setup] %(message)s")
    ensure_chromium()
