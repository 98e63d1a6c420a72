"""orchestrator/files.py: small files are replaced whole or not at all."""

from __future__ import annotations

import os

import pytest

from orchestrator.files import write_text_atomically


def test_the_file_is_replaced_whole_with_a_plain_files_mode(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    write_text_atomically(path, '{"new": true}')
    assert path.read_text() == '{"new": true}'
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_write_that_fails_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    path = tmp_path / "stream_summary.json"
    path.write_text("old")

    def killed(*_):
        raise KeyboardInterrupt  # as a process stopped between the write and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomically(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["stream_summary.json"]
