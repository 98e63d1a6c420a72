"""The content-addressed cache builds an entry once, atomically, and keys by content."""

from __future__ import annotations

import threading

from orchestrator.cache import ArtifactCache, content_key


def test_key_depends_on_content_only():
    assert content_key("m", {"a": 1, "b": 2}) == content_key("m", {"b": 2, "a": 1})
    assert content_key("m", {"a": 1}) != content_key("m", {"a": 2})
    assert content_key("m", {"a": 1}) != content_key("n", {"a": 1})


def test_builds_once_and_reuses(tmp_path):
    cache = ArtifactCache(tmp_path)
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "x.txt").write_text("hello")

    first, cached1 = cache.get_or_build("k", build, {"s": 1})
    second, cached2 = cache.get_or_build("k", build, {"s": 1})
    assert (first, cached1, cached2) == (second, False, True)
    assert len(calls) == 1
    assert (first / "x.txt").read_text() == "hello"


def test_failed_build_leaves_nothing(tmp_path):
    cache = ArtifactCache(tmp_path)

    def broken(folder):
        (folder / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    try:
        cache.get_or_build("k", broken)
    except RuntimeError:
        pass
    assert not cache.path("k").exists()
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_concurrent_builders_build_once(tmp_path):
    cache = ArtifactCache(tmp_path)
    calls = []

    def slow_build(folder):
        calls.append(1)
        threading.Event().wait(0.2)
        (folder / "done").write_text("1")

    threads = [threading.Thread(target=cache.get_or_build, args=("k", slow_build)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
