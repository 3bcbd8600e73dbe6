"""The engine <-> server contract: the wire format (a frame is a 4-byte little-endian length, then the body,
marshal data) and the resource limits a server applies to each program (`server_limits`).

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


def server_limits(p) -> dict:
    """The per-program limits a server enforces (server.py `_confine_self`, the RLIMITs every child inherits; the
    CPU limit per child and the output cap in runners.py), from the `sandbox:` params (SandboxParams).
    A plain dict because it crosses the process boundary as marshal data. Adding a limit: a SandboxParams field, its
    line here, its enforcement in server.py (docs/adding-a-sandbox-limit.md)."""
    return {"as_bytes": p.memory_mb << 20, "cpu_s": p.cpu_s, "fsize_bytes": p.file_size_mb << 20,
            "nofile": p.open_files, "nproc": p.processes, "stdout_bytes": p.stdout_kb << 10}
