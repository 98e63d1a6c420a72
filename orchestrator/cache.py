"""Content-addressed cache for expensive preparation (tokenizer, fine-tuned target/retain models, reports).

A key is the hash of everything that determines the artefact, so trial 50 of a sweep or request 200 of a stream
finds the work of trial 1 done. Entries are built in a temporary folder and renamed into place, under a file lock,
so concurrent trials on one machine build each entry once and never see a half-written one.

The cache verifies what it hands out: a completed entry carries `.manifest.json`, the size and SHA-256 digest of
every file in it, and each hit checks them (a few milliseconds for the tiny models' few MB). An entry that fails
(a truncated or altered file, a missing one, an unreadable manifest) is rebuilt after one progress line naming the
file, never used. Entries written before manifests existed (only a `.complete` marker) count as damaged too and are
rebuilt once, in place: their contents were never recorded, so nothing could vouch for them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

# Bump when a change to the code makes earlier cached artefacts wrong.
CACHE_VERSION = "1"
MANIFEST = ".manifest.json"  # written last: an entry without it is incomplete


def default_cache_root() -> Path:
    return Path(os.environ.get("RAY_UNLEARN_CACHE", Path.home() / ".cache" / "ray-unlearn"))


def content_key(kind: str, spec: Any) -> str:
    """A short stable hash of `spec` (anything JSON-serialisable), namespaced by `kind`."""
    blob = json.dumps({"kind": kind, "version": CACHE_VERSION, "spec": spec}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (measured: 2x faster than BLAKE2b here, OpenSSL uses the CPU's SHA extensions)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record the size and digest of every file under `folder` (the manifest itself aside)."""
    files = {
        str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": file_digest(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))


def manifest_problem(folder: Path) -> str | None:
    """Why `folder` does not match its manifest (one short phrase), or None when every file does."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        if (folder / ".complete").exists():
            return "no manifest (written by an earlier version, which did not record file hashes)"
        return "incomplete (no manifest)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST}: unreadable ({type(err).__name__})"
    for name, expected in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
            if size != expected["bytes"]:
                return f"{name}: {size} bytes, expected {expected['bytes']}"
            if file_digest(path) != expected["sha256"]:
                return f"{name}: hash mismatch"
        except FileNotFoundError:
            return f"{name}: missing"
        except OSError as err:
            return f"{name}: unreadable ({type(err).__name__})"
    return None


class ArtifactCache:
    """Folders keyed by content hash under one root; `progress` gets the line saying a damaged entry is rebuilt."""

    def __init__(self, root: str | os.PathLike | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.progress = progress or (lambda message: print(message, file=sys.stderr, flush=True))

    def path(self, key: str) -> Path:
        return self.root / key

    def get_or_build(self, key: str, build: Callable[[Path], None], spec: Any = None) -> tuple[Path, bool]:
        """Return (folder, was_cached). `build(tmpdir)` fills a fresh folder when the entry is missing or damaged."""
        final = self.path(key)
        if final.exists() and manifest_problem(final) is None:
            return final, True
        with self._lock(key):
            # Checked again under the lock: another process may have built (or repaired) the entry meanwhile.
            problem = manifest_problem(final) if final.exists() else None
            if final.exists() and problem is None:
                return final, True
            if problem is not None:
                self.progress(f"cache entry {key} is damaged ({problem}); rebuilding")
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
            try:
                build(tmp)
                (tmp / ".spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
                write_manifest(tmp)
                self._replace(final, tmp)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return final, False

    def _replace(self, final: Path, built: Path) -> None:
        """Move `built` to `final`; a damaged entry is first renamed aside, so no reader sees a mix of the two."""
        if final.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}-damaged-", dir=self.root))
            os.replace(final, stale / final.name)
            os.replace(built, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(built, final)

    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        with open(self.root / f".{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
