"""Throughput figures of a run (issue 27 item 7): real tokens, padding share, tokens per second, peak memory."""

from __future__ import annotations

import torch

from orchestrator.worker.throughput import Throughput, peak_memory_bytes


def test_padding_share_and_tokens_per_second_by_hand():
    counts = Throughput()
    forget = {"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}  # 5 real of 8
    retain = {"attention_mask": torch.tensor([[1, 1, 1, 1]]), "index": torch.tensor([0])}  # 4 of 4
    counts.count({"forget": forget, "retain": retain})
    counts.count({"forget": {"input_ids": torch.zeros(1, 3)}})  # a part without a mask counts nothing
    counts.seconds = 2.0
    figures = counts.across_ranks(world_size=1, device=torch.device("cpu"))
    assert (figures["tokens"], figures["padded_positions"]) == (9, 12)
    assert figures["padding_share"] == 0.25 and figures["tokens_per_second"] == 4.5
    assert figures["peak_memory_kind"] == "process_max_rss"
    [peak] = figures["peak_memory_bytes_per_rank"]
    assert peak >= 10 * 2**20  # a Python process with torch loaded holds more than 10 MiB
    assert peak_memory_bytes(torch.device("cpu")) >= peak  # a peak only grows


def test_nothing_trained_gives_no_rates():
    figures = Throughput().across_ranks(1, torch.device("cpu"))
    assert figures["padding_share"] is None and figures["tokens_per_second"] is None
