"""The ledger (SQLite WAL: states, one-transaction batches, recovery after a crash), the policy, the drift maths."""

from __future__ import annotations

import sqlite3

import pytest

from orchestrator.stream.config import PolicyConfig
from orchestrator.stream.drift import drift_series, forget_matrix, percentile, resurgence
from orchestrator.stream.ledger import Ledger
from orchestrator.stream.policy import Waiting, next_batch

GA = {"name": "ga", "hparams": {}, "lr": 1e-4, "epochs": 10}


def test_the_ledger_is_in_wal_mode_and_records_a_request_life(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ledger.receive(1, "r1", 0.5, ["p/q0"], {"p/q0": "h0"}, None)
    ledger.quarantine(2, "r2", "2 unknown item id(s)", {"x": "h"})
    batch = ledger.start_batch([1], GA, None)
    assert [r.state for r in ledger.requests()] == ["running", "quarantined"]
    ledger.finish_batch(batch, "applied", "/ckpt/1", {1: {"after": {"rouge_l": 0.1}}}, {"utility": {}}, {"service": 1})
    row = ledger.requests()[0]
    assert (row.state, row.batch, row.checkpoint, row.metrics["after"]["rouge_l"]) == ("applied", 1, "/ckpt/1", 0.1)
    assert ledger.last_checkpoint() == "/ckpt/1" and ledger.last_seq() == 2
    assert [e["event"] for e in ledger.audit()] == ["received", "quarantined", "running", "applied"]
    ledger.close()


def test_a_batch_running_at_a_crash_is_abandoned_and_its_requests_received_again(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    for seq in (1, 2):
        ledger.receive(seq, f"r{seq}", 0.0, [], {}, None)
    first = ledger.start_batch([1], GA, None)
    ledger.finish_batch(first, "applied", "/ckpt/1", {}, {}, {})
    ledger.start_batch([2], GA, "/ckpt/1")
    ledger.db.close()  # the process dies here: no finish_batch

    again = Ledger(path)
    assert again.recover() == [2]
    assert [(r.seq, r.state) for r in again.requests()] == [(1, "applied"), (2, "received")]
    assert again.last_checkpoint() == "/ckpt/1"
    third = again.start_batch([2], GA, again.last_checkpoint())
    assert third == 3  # batch numbers are never reused
    assert [b["state"] for b in again.batches()] == ["applied", "abandoned", "running"]


def test_a_failed_transaction_leaves_nothing_behind(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.receive(1, "r1", 0.0, [], {}, None)
    with pytest.raises(sqlite3.IntegrityError):
        ledger.receive(1, "r1-again", 0.0, [], {}, None)  # the same source line twice
    assert len(ledger.requests()) == 1 and len(ledger.audit()) == 1


def _w(seq, due=0.0, key="ga"):
    return Waiting(seq, f"r{seq}", due, key)


def test_one_at_a_time_takes_the_oldest():
    assert next_batch([_w(1), _w(2)], PolicyConfig(), 10.0, True) == ([_w(1)], None)
    assert next_batch([], PolicyConfig(), 10.0, True) == ([], None)


def test_coalesce_joins_waiting_requests_of_one_method_up_to_the_size():
    policy = PolicyConfig(mode="coalesce", max_batch=2)
    assert next_batch([_w(1), _w(2), _w(3)], policy, 10.0, True)[0] == [_w(1), _w(2)]
    assert next_batch([_w(1), _w(2, key="npo"), _w(3)], policy, 10.0, True)[0] == [_w(1)]


def test_coalesce_waits_for_the_window_while_more_may_come():
    policy = PolicyConfig(mode="coalesce", max_batch=3, window_s=2.0)
    assert next_batch([_w(1, due=9.5)], policy, 10.0, True) == ([], 1.5)
    assert next_batch([_w(1, due=9.5)], policy, 10.0, False) == ([_w(1, due=9.5)], None)
    assert next_batch([_w(1, due=7.0)], policy, 10.0, True) == ([_w(1, due=7.0)], None)


def test_drift_matrix_and_resurgence():
    assert drift_series([0.5, None, 0.4], 0.6) == pytest.approx([-0.1, None, -0.2])
    applied = [{"after": {"1": {"rouge_l": 0.2}}}, {"after": {"1": {"rouge_l": 0.5}, "2": {"rouge_l": 0.1}}}]
    matrix = forget_matrix(applied, [1, 2], "rouge_l")
    assert matrix == [[0.2, 0.5], [None, 0.1]]
    assert resurgence(matrix) == [pytest.approx(0.3), None]
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([], 50) is None
    assert percentile([1.0, 2.0], 50) == 1.5
