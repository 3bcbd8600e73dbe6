"""The engine <-> server wire format: a frame is a 4-byte little-endian length, then the body (marshal data).

Shared by the engine (`engine.py`, in the caller's process) and the server (`server.py`, in the sandbox's own
interpreter), so it imports only `os` and `struct`: the server's import-light rule applies here too.
"""

from __future__ import annotations

import os
import struct


def write_frame(fd: int, body: bytes) -> None:
    data = struct.pack("<I", len(body)) + body
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> bytes | None:
    head = _read_exact(fd, 4)
    return None if head is None else _read_exact(fd, struct.unpack("<I", head)[0])
