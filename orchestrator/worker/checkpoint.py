"""A run's resumable state on disk: the engine's files (weights, optimizer, scheduler) and the loop's own state.

Files are written whole into a sibling folder and renamed into place, so a reader never sees half a checkpoint or
an exported model, and files of an earlier version (another shard layout) do not linger beside the new ones. The
loop's state is plain data (numbers, lists, dicts) read back with `weights_only=True`: a checkpoint folder is never
a way to run code.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

TRAIN_STATE = "train_state.pt"


@contextlib.contextmanager
def written_in_place(target: Path) -> Iterator[Path]:
    """A sibling folder to write `target`'s files into, renamed over `target` when the block ends.

    The new folder is complete before the old one goes: the old one is moved aside, the new one renamed in, and
    only then is the old one removed."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    yield partial
    previous = target.with_name(target.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    partial.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def save_train_state(folder: Path, state: dict[str, Any]) -> None:
    torch.save(state, folder / TRAIN_STATE)


def load_train_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / TRAIN_STATE, map_location="cpu", weights_only=True)


def has_train_state(folder: Path) -> bool:
    return (folder / TRAIN_STATE).is_file()
