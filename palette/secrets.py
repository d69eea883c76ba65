"""Secrets the embedded runtime keeps in its data directory (URL signing, token signing).

Created on first use (random, mode 0600) and race-free: the secret is written to a private
temp file and hard-linked into place, so concurrent first starts agree on one secret and
none reads a half-written file. A secret file that others can read is refused.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

MIN_SECRET_BYTES = 16


def load_or_create_secret(data_dir: Path | str, filename: str) -> bytes:
    """The signing secret stored in `data_dir`, created (random, mode 0600) on first use.

    Creation is race-free: the secret is written to a private temp file and hard-linked into
    place, so concurrent first starts agree on one secret and none reads a half-written file.
    A secret file that others can read is refused rather than trusted.
    """
    directory = Path(data_dir)
    path = directory / filename
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{filename}-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secret.hex())
            out.flush()
            os.fsync(out.fileno())
        os.link(temp, path)
    except FileExistsError:
        return _read_secret(path)
    finally:
        os.unlink(temp)
    return secret


def _read_secret(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} is accessible to other users; run `chmod 600 {path}`")
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except ValueError:
        secret = b""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{path} does not hold a signing secret")
    return secret
