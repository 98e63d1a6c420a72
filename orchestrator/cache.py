"""Content-addressed cache for expensive preparation (tokenizer, fine-tuned target/retain models, reports).

A key is the hash of everything that determines the artefact, so trial 50 of a sweep or request 200 of a stream
finds the work of trial 1 done. Entries are built in a temporary folder and renamed into place, under a file lock,
so concurrent trials on one machine build each entry once and never see a half-written one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

# Bump when a change to the code makes earlier cached artefacts wrong.
CACHE_VERSION = "1"


def default_cache_root() -> Path:
    return Path(os.environ.get("RAY_UNLEARN_CACHE", Path.home() / ".cache" / "ray-unlearn"))


def content_key(kind: str, spec: Any) -> str:
    """A short stable hash of `spec` (anything JSON-serialisable), namespaced by `kind`."""
    blob = json.dumps({"kind": kind, "version": CACHE_VERSION, "spec": spec}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


class ArtifactCache:
    """Folders keyed by content hash under one root."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key

    def get_or_build(self, key: str, build: Callable[[Path], None], spec: Any = None) -> tuple[Path, bool]:
        """Return (folder, was_cached). `build(tmpdir)` fills a fresh folder when the entry is missing."""
        final = self.path(key)
        if (final / ".complete").exists():
            return final, True
        with self._lock(key):
            if (final / ".complete").exists():
                return final, True
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
            try:
                build(tmp)
                (tmp / ".spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
                (tmp / ".complete").touch()
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return final, False

    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        with open(self.root / f".{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
