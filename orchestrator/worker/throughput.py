"""What a run's training pushed through each rank: real tokens, padded positions, wall time and peak memory.

Padding is the share of the batch positions that are padding (every part the method reads: forget, retain, ...);
tokens per second counts real tokens only, summed over the ranks, over the train loop's own wall time (model
loading and set-up excluded). Peak memory is per rank: the device's peak allocation on a GPU, the process's peak
resident set on CPU (for a resident worker, over the process's life so far, every earlier run included).
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from typing import Any

import torch

from orchestrator.worker.ranks import gather


@dataclass
class Throughput:
    """Counts of one rank, summed over every batch it trained on."""

    tokens: int = 0  # real (attended) positions
    positions: int = 0  # every position of the padded batch parts
    seconds: float = 0.0  # train loop wall time

    def count(self, batch: dict[str, dict[str, torch.Tensor]]) -> None:
        for part in batch.values():
            mask = part.get("attention_mask")
            if mask is not None:
                self.tokens += int(mask.sum())
                self.positions += mask.numel()

    def across_ranks(self, world_size: int, device: torch.device) -> dict[str, Any]:
        """The run's figures, on every rank (a collective: call it on all of them)."""
        ranks = gather((self.tokens, self.positions, self.seconds, peak_memory_bytes(device)), world_size)
        tokens = sum(r[0] for r in ranks)
        positions = sum(r[1] for r in ranks)
        seconds = max(r[2] for r in ranks)
        return {"tokens": tokens, "padded_positions": positions,
                "padding_share": round(1 - tokens / positions, 4) if positions else None,
                "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
                "train_seconds": round(seconds, 3), "peak_memory_bytes_per_rank": [r[3] for r in ranks],
                "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss"}


def peak_memory_bytes(device: torch.device) -> int:
    """This rank's peak memory: the device's peak allocation on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
