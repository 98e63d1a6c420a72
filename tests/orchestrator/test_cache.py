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


def _model_cache(tmp_path):
    """A cache whose one entry is a real safetensors file, and the list of progress lines it printed."""
    import torch
    from safetensors.torch import save_file

    lines: list[str] = []
    cache = ArtifactCache(tmp_path, progress=lines.append)
    builds = []

    def build(folder):
        builds.append(folder)
        save_file({"weight": torch.arange(4096, dtype=torch.float32)}, folder / "model.safetensors")
        (folder / "config.json").write_text('{"hidden_size": 8}')

    folder, cached = cache.get_or_build("tiny-target-0", build, {"s": 1})
    assert not cached and len(builds) == 1 and lines == []
    return cache, build, builds, lines, folder


def _rebuilt_and_loadable(cache, build, builds, lines, reason):
    from safetensors.torch import load_file

    folder, cached = cache.get_or_build("tiny-target-0", build, {"s": 1})
    assert not cached and len(builds) == 2
    assert lines == [f"cache entry tiny-target-0 is damaged ({reason}); rebuilding"]
    assert load_file(folder / "model.safetensors")["weight"].sum().item() == sum(range(4096))
    again, cached = cache.get_or_build("tiny-target-0", build, {"s": 1})
    assert (again, cached, len(builds), len(lines)) == (folder, True, 2, 1)  # the repaired entry verifies


def test_truncated_file_is_rebuilt_not_used(tmp_path):
    cache, build, builds, lines, folder = _model_cache(tmp_path)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    _rebuilt_and_loadable(cache, build, builds, lines, f"model.safetensors: {size // 2} bytes, expected {size}")


def test_flipped_bits_are_rebuilt_not_used(tmp_path):
    cache, build, builds, lines, folder = _model_cache(tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0b100  # one bit of one weight: same size, still a valid safetensors file, silently wrong
    weights.write_bytes(bytes(data))
    _rebuilt_and_loadable(cache, build, builds, lines, "model.safetensors: hash mismatch")


def test_missing_file_is_rebuilt(tmp_path):
    cache, build, builds, lines, folder = _model_cache(tmp_path)
    (folder / "config.json").unlink()
    _rebuilt_and_loadable(cache, build, builds, lines, "config.json: missing")


def test_unreadable_manifest_is_rebuilt(tmp_path):
    cache, build, builds, lines, folder = _model_cache(tmp_path)
    (folder / ".manifest.json").write_text('{"files": ')
    _rebuilt_and_loadable(cache, build, builds, lines, ".manifest.json: unreadable (JSONDecodeError)")


def test_entry_of_the_earlier_format_is_rebuilt_once(tmp_path):
    """Entries written before manifests (a `.complete` marker only) cannot be vouched for: rebuilt, in place."""
    cache, build, builds, lines, folder = _model_cache(tmp_path)
    (folder / ".manifest.json").unlink()
    (folder / ".complete").touch()
    _rebuilt_and_loadable(cache, build, builds, lines,
                          "no manifest (written by an earlier version, which did not record file hashes)")
    assert not (folder / ".complete").exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["tiny-target-0"]  # the damaged copy is gone


def test_concurrent_readers_of_a_damaged_entry_rebuild_it_once(tmp_path):
    cache, build, builds, lines, folder = _model_cache(tmp_path)
    (folder / "config.json").write_text('{"hidden_size": 9}')  # same size, other content

    def slow_build(tmp):
        threading.Event().wait(0.2)
        build(tmp)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_build("tiny-target-0", slow_build)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 2
    assert lines == ["cache entry tiny-target-0 is damaged (config.json: hash mismatch); rebuilding"]
    assert sorted(cached for _, cached in results) == [False, True, True]
    assert (folder / "config.json").read_text() == '{"hidden_size": 8}'
