"""Small files written whole: a reader, or a process killed mid-write, finds the old file or the new one, never
half of one (a summary, a report, a run's recorded identity)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write `text` to a sibling file, flush it to disk, then rename it over `path` (one atomic step on POSIX).
    The new file's mode is the one a plain write would give it (0666 less the umask)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
