"""Stopping and starting the tests' Postgres for real, with its own pg_ctl."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import psycopg


async def data_directory(database_url: str) -> Path | None:
    """The server's data directory when this machine can run pg_ctl on it, else None."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await (await conn.execute("SHOW data_directory")).fetchone()
    directory = Path(row[0]) if row else None
    return directory if directory is not None and (directory / "postmaster.pid").exists() else None


def pg_ctl(data_dir: Path, *args: str) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH  # the binaries of the embedded server

    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), "-w", *args]
    owner = data_dir.stat().st_uid
    if os.geteuid() == 0 and owner != 0:
        # postgres refuses to run as root; the embedded server runs as a user of its own
        command = ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--", *command]
    subprocess.run(command, check=True, timeout=60, stdout=subprocess.DEVNULL, cwd=data_dir)
