"""JSONL files, the format of every dataset here: read with line-numbered errors, write atomically.

    from stepcode.jsonl import atomic_write_text, read_jsonl, write_jsonl
    rows = list(read_jsonl("data/traces.jsonl"))    # JsonlError("data/traces.jsonl:17: bad JSON (...)")
    write_jsonl("out.jsonl", rows)                   # temp file, fsync, rename: readers never see half a file
    atomic_write_text("metrics.json", text)          # the same for one text (every JSON file written here)

Text that UTF-8 cannot encode (a lone surrogate such as chr(0xD800), which a traced program can print) is written
as its backslash escape, never fatal: inside a JSON string, `\\ud800` is JSON's own escape, read back as the same
string.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from stepcode.errors import UserError


class JsonlError(UserError, ValueError):
    """A malformed JSONL file; the message starts with `FILE:LINE:`."""


def numbered_lines(path) -> Iterator[tuple[int, bytes]]:
    """Non-blank raw lines with 1-based numbers; blank lines (a trailing newline, say) carry no row.

    Bytes, not text, so that a line of invalid UTF-8 is one bad row with its own number, not a failed file.
    """
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                yield lineno, raw


def decode_line(raw: bytes) -> dict:
    """The JSON object on line `raw`; a ValueError says why there is none."""
    try:
        obj = json.loads(raw.decode("utf-8").rstrip("\r\n"))  # else an error at the end reads "line 2"
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"bad JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:  # e.g. 100,000 nested brackets: one bad row, like any other
        raise ValueError("JSON nested too deeply to read") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def read_jsonl(path) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file; bad JSON or a non-object raises JsonlError naming file:line."""
    for lineno, line in numbered_lines(path):
        try:
            yield decode_line(line)
        except ValueError as e:
            raise JsonlError(f"{path}:{lineno}: {e}") from None


def write_jsonl(path, rows: Iterable[dict]) -> None:
    """Write rows as JSONL atomically (`atomic_file`). If serialising any row raises, the temp file is removed and
    an existing `path` is left untouched."""
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(jsonl_line(row))


def jsonl_line(row: dict) -> bytes:
    """One row as a JSONL line, the bytes `write_jsonl` writes (for writers that stream into their own file)."""
    return _utf8(json.dumps(row, ensure_ascii=False) + "\n")


def atomic_write_text(path, text: str) -> None:
    """Write `text` to `path` as UTF-8 (a lone surrogate backslash-escaped), atomically (`atomic_file`)."""
    with atomic_file(path) as fh:
        fh.write(_utf8(text))


def _utf8(text: str) -> bytes:
    # UTF-8 encodes every code point but a lone surrogate; backslashreplace writes it as `\udXXX`, which inside a
    # JSON string (the only place json.dumps puts one) is the JSON escape of that same code point.
    return text.encode("utf-8", "backslashreplace")


@contextlib.contextmanager
def atomic_file(path) -> Iterator[BinaryIO]:
    """A binary file to write that becomes `path` only if the block completes: a temp file in the same directory
    (a unique name, so concurrent writers never share one), fsync, then os.replace. If the block raises, the temp
    file is removed and an existing `path` is left untouched."""
    path = Path(path)
    if path.exists() and not path.is_file():   # a device, a pipe (/dev/stdout): renaming over it would replace it
        raise UserError(f"{path}: not a regular file (a directory, device, pipe or socket): give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so os.replace is a rename on one filesystem (atomic), never a copy.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any other written file
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself survive a crash
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# A table is one JSONL file, or a folder of part files read in name order (what `stepcode trace -o DIR` streams, one
# part at a time, so no stage holds a whole table in memory and DVC tracks the folder).
PART_GLOB = "part-*.jsonl"


def part_name(k: int) -> str:
    return f"part-{k:05d}.jsonl"


def is_folder_path(path) -> bool:
    """Whether an output path names a table folder (no `.jsonl` suffix) rather than one JSONL file."""
    return Path(path).suffix != ".jsonl"


def table_files(path) -> list[Path]:
    """The JSONL files of a table: the file itself, or the folder's part files in order."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    parts = sorted(path.glob(PART_GLOB))
    if not parts:
        raise JsonlError(f"{path}: a folder without {PART_GLOB} files: give a JSONL file or a folder written by "
                         "`stepcode trace -o FOLDER`")
    return parts


def read_table(path) -> Iterator[dict]:
    """The rows of a table (a JSONL file or a folder of part files), streamed; errors name the part file's line."""
    for f in table_files(path):
        yield from read_jsonl(f)


def write_parts(out_dir, rows: Iterable[dict], part_rows: int) -> int:
    """Stream rows into `out_dir/part-00000.jsonl`, ... (`part_rows` each; an empty table is one empty part), holding
    one part at most in memory. The folder is replaced whole, atomically: the parts are written into a temp folder
    beside it that takes its place only when every row is written; a failure leaves an existing folder untouched.
    Returns the number of rows."""
    import shutil

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder: give a folder path (or a .jsonl file path)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    n, part, buffer = 0, 0, []
    try:
        for row in rows:
            buffer.append(row)
            n += 1
            if len(buffer) == part_rows:
                write_jsonl(tmp / part_name(part), buffer)
                part, buffer = part + 1, []
        if buffer or part == 0:
            write_jsonl(tmp / part_name(part), buffer)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


def replace_folder(new: Path, out: Path) -> None:
    """Put the folder `new` (beside `out`) in the place of `out`: two renames, then the old folder is removed."""
    import shutil

    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.rmdir(old)
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
