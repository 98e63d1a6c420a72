"""The stream's durable ledger: SQLite in WAL mode, in the stream's output folder.

Every request read from the source gets a row keyed by its position in the source (`seq`), so a restarted stream
skips what it has already received; its state moves received -> running -> applied | rolled_back | failed, or it
is quarantined on arrival. The runs that apply requests are `batches` (one request each, or several coalesced): a
batch is recorded `applied` with its checkpoint and metrics in one transaction, and a batch found `running` at
start-up (the process died while the workers held it) is abandoned and its requests received again, to be applied
from the last applied checkpoint. So a request is applied to the model lineage exactly once.

`audit` is append-only: one record per event of a request (what was asked: ids and content hashes; when; the
method and settings; the evidence of forgetting; the checkpoint it produced). The ledger holds ids and hashes,
never forget text. An attack point (`stream.attack_every`) is an `attacked` event of every request applied so far,
recorded in the transaction of the batch it follows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.stream.attacks import AttackOutcome, AttackPoint

STATES = ("received", "running", "applied", "failed", "rolled_back", "quarantined")
LEDGER_FILE = "ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY, request_id TEXT, state TEXT NOT NULL, reason TEXT, arrival REAL, received_at REAL,
    items TEXT, hashes TEXT, method TEXT, batch INTEGER, checkpoint TEXT, metrics TEXT, updated_at REAL);
CREATE TABLE IF NOT EXISTS batches (
    batch INTEGER PRIMARY KEY, seqs TEXT NOT NULL, state TEXT NOT NULL, method TEXT, base_checkpoint TEXT,
    checkpoint TEXT, dispatched_at REAL, finished_at REAL, metrics TEXT, timings TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS audit (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, seq INTEGER, request_id TEXT, event TEXT NOT NULL,
    record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS source_lines (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state, seq);
CREATE INDEX IF NOT EXISTS requests_by_id ON requests (request_id);
CREATE INDEX IF NOT EXISTS batches_by_state ON batches (state, batch);
CREATE INDEX IF NOT EXISTS audit_by_request ON audit (request_id, event);
"""


@dataclass(frozen=True)
class RequestRow:
    seq: int
    request_id: str | None
    state: str
    reason: str | None
    arrival: float | None
    received_at: float | None
    items: list[str]
    hashes: dict[str, str]
    method: dict[str, Any] | None
    batch: int | None
    checkpoint: str | None
    metrics: dict[str, Any] | None



def read_only_rows(path: Path, query: str) -> list[tuple]:
    """`query`'s rows from a ledger that another process may be writing (opened read-only); no rows while the
    file or its tables do not exist yet. For watching a stream from outside (benchmarks, tests)."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(query).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


class Ledger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an applied record survives a power cut, not just a kill
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- meta -----------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.set_metas({key: value})

    def set_metas(self, values: dict[str, Any]) -> None:
        """Several meta keys in one transaction: a kill leaves all of them or none."""
        with self._transaction():
            for key, value in values.items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # --- receipt ----------------------------------------------------------------------------------------------
    def last_seq(self) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM requests").fetchone()
        return row[0] or 0

    def first_seq_of(self, request_id: str) -> int | None:
        row = self.db.execute("SELECT MIN(seq) FROM requests WHERE request_id = ? AND state != 'quarantined'",
                              (request_id,)).fetchone()
        return row[0]

    def receive(self, seq: int, request_id: str, arrival: float, items: list[str], hashes: dict[str, str],
                method: dict[str, Any] | None, line_hash: str | None = None) -> None:
        """Record a valid request (and its source line's keyed hash, what a restart checks the source against)."""
        now = time.time()
        with self._transaction():
            self._source_line(seq, line_hash)
            self.db.execute(
                "INSERT INTO requests (seq, request_id, state, arrival, received_at, items, hashes, method, "
                "updated_at) VALUES (?, ?, 'received', ?, ?, ?, ?, ?, ?)",
                (seq, request_id, arrival, now, json.dumps(items), json.dumps(hashes), json.dumps(method), now))
            self._audit(seq, request_id, "received", {"items": items, "hashes": hashes, "method": method,
                                                      "arrival": arrival})

    def quarantine(self, seq: int, request_id: str | None, reason: str, hashes: dict[str, str],
                   line_hash: str | None = None) -> None:
        now = time.time()
        with self._transaction():
            self._source_line(seq, line_hash)
            self.db.execute(
                "INSERT INTO requests (seq, request_id, state, reason, received_at, hashes, updated_at) "
                "VALUES (?, ?, 'quarantined', ?, ?, ?, ?)", (seq, request_id, reason, now, json.dumps(hashes), now))
            self._audit(seq, request_id, "quarantined", {"reason": reason, "hashes": hashes})

    def line_hash(self, seq: int) -> str | None:
        """The keyed hash of source line `seq` as it was received (None for lines received before it was kept)."""
        row = self.db.execute("SELECT hash FROM source_lines WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else row[0]

    def _source_line(self, seq: int, line_hash: str | None) -> None:
        if line_hash:
            self.db.execute("INSERT OR REPLACE INTO source_lines VALUES (?, ?)", (seq, line_hash))

    # --- batches ----------------------------------------------------------------------------------------------
    def recover(self) -> list[int]:
        """Batches left `running` by a process that died: abandoned, their requests received again."""
        abandoned = [r[0] for r in self.db.execute("SELECT batch FROM batches WHERE state = 'running'")]
        for batch in abandoned:
            seqs = json.loads(self.db.execute("SELECT seqs FROM batches WHERE batch = ?", (batch,)).fetchone()[0])
            with self._transaction():
                self.db.execute("UPDATE batches SET state = 'abandoned', finished_at = ? WHERE batch = ?",
                                (time.time(), batch))
                for seq in seqs:
                    self._set_state(seq, "received", batch=None)
                    self._audit(seq, self._request_id(seq), "requeued",
                                {"batch": batch, "why": "the stream stopped while the batch was running"})
        return abandoned

    def start_batch(self, seqs: list[int], method: dict[str, Any], base_checkpoint: str | None) -> int:
        row = self.db.execute("SELECT MAX(batch) FROM batches").fetchone()
        batch = (row[0] or 0) + 1
        with self._transaction():
            self.db.execute("INSERT INTO batches (batch, seqs, state, method, base_checkpoint, dispatched_at) "
                            "VALUES (?, ?, 'running', ?, ?, ?)",
                            (batch, json.dumps(seqs), json.dumps(method), base_checkpoint, time.time()))
            for seq in seqs:
                self._set_state(seq, "running", batch=batch)
                self._audit(seq, self._request_id(seq), "running",
                            {"batch": batch, "method": method, "base_checkpoint": base_checkpoint})
        return batch

    def finish_batch(self, batch: int, state: str, checkpoint: str | None, metrics: dict[int, dict[str, Any]],
                     batch_metrics: dict[str, Any], timings: dict[str, Any], reason: str | None = None,
                     attacked: tuple[AttackPoint, list[int]] | None = None) -> None:
        """One transaction: the batch and each of its requests (`metrics` by seq) become `state`; with `attacked`
        (the attack point after this batch, and the seqs of every request applied so far), one `attacked` event per
        request, with that request's recovery under each attack."""
        assert state in ("applied", "rolled_back", "failed"), state
        assert attacked is None or state == "applied", "only an applied batch is attacked"
        seqs = json.loads(self.db.execute("SELECT seqs FROM batches WHERE batch = ?", (batch,)).fetchone()[0])
        with self._transaction():
            self.db.execute("UPDATE batches SET state = ?, checkpoint = ?, finished_at = ?, metrics = ?, "
                            "timings = ?, reason = ? WHERE batch = ?",
                            (state, checkpoint, time.time(), json.dumps(batch_metrics), json.dumps(timings), reason,
                             batch))
            for seq in seqs:
                self._set_state(seq, state, batch=batch, checkpoint=checkpoint, metrics=metrics.get(seq),
                                reason=reason)
                self._audit(seq, self._request_id(seq), state,
                            {"batch": batch, "checkpoint": checkpoint, "evidence": metrics.get(seq),
                             "utility": batch_metrics.get("utility"), "reason": reason})
            if attacked is not None:
                self._attacked(*attacked)

    def _attacked(self, point: AttackPoint, seqs: list[int]) -> None:
        out = point.outcome
        for seq in seqs:
            self._audit(seq, self._request_id(seq), "attacked",
                        {"batch": point.batch, "after_request": point.after_request,
                         "attacks": out.per_request.get(seq, {}), "seconds": out.seconds, "error": out.error})

    def attack_points(self) -> list[AttackPoint]:
        """The stream's attack points in order, from their `attacked` events (a request no attack scored has an
        event with no attacks, and no entry in its point's `per_request`)."""
        points: dict[int, AttackPoint] = {}
        for row in self.db.execute("SELECT seq, record FROM audit WHERE event = 'attacked' ORDER BY event_id"):
            record = json.loads(row[1])
            point = points.setdefault(record["batch"], AttackPoint(record["batch"], record["after_request"],
                                                                   AttackOutcome({}, record["seconds"],
                                                                                 record["error"])))
            if record["attacks"]:
                point.outcome.per_request[row[0]] = record["attacks"]
        return list(points.values())

    def last_checkpoint(self) -> str | None:
        row = self.db.execute("SELECT checkpoint FROM batches WHERE state = 'applied' ORDER BY batch DESC "
                              "LIMIT 1").fetchone()
        return None if row is None else row[0]

    def batches(self) -> list[dict[str, Any]]:
        cols = ("batch", "seqs", "state", "method", "base_checkpoint", "checkpoint", "dispatched_at",
                "finished_at", "metrics", "timings", "reason")
        out = []
        for row in self.db.execute(f"SELECT {', '.join(cols)} FROM batches ORDER BY batch"):
            record = dict(zip(cols, row))
            for key in ("seqs", "method", "metrics", "timings"):
                record[key] = json.loads(record[key]) if record[key] is not None else None
            out.append(record)
        return out

    # --- reading --------------------------------------------------------------------------------------------
    def requests(self, state: str | None = None) -> list[RequestRow]:
        query = ("SELECT seq, request_id, state, reason, arrival, received_at, items, hashes, method, batch, "
                 "checkpoint, metrics FROM requests")
        rows = self.db.execute(query + (" WHERE state = ?" if state else "") + " ORDER BY seq",
                               (state,) if state else ()).fetchall()
        return [RequestRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else [],
                           json.loads(r[7]) if r[7] else {}, json.loads(r[8]) if r[8] else None, r[9], r[10],
                           json.loads(r[11]) if r[11] else None) for r in rows]

    def audit(self) -> list[dict[str, Any]]:
        return [{"event_id": r[0], "at": r[1], "seq": r[2], "request_id": r[3], "event": r[4],
                 "record": json.loads(r[5])}
                for r in self.db.execute("SELECT event_id, at, seq, request_id, event, record FROM audit "
                                         "ORDER BY event_id")]

    # --- internals ------------------------------------------------------------------------------------------
    def _transaction(self):
        return _Transaction(self.db)

    def _request_id(self, seq: int) -> str | None:
        row = self.db.execute("SELECT request_id FROM requests WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else row[0]

    def _set_state(self, seq: int, state: str, **fields: Any) -> None:
        assignments = ["state = ?", "updated_at = ?"]
        values: list[Any] = [state, time.time()]
        for key, value in fields.items():
            assignments.append(f"{key} = ?")
            values.append(json.dumps(value) if key == "metrics" and value is not None else value)
        self.db.execute(f"UPDATE requests SET {', '.join(assignments)} WHERE seq = ?", (*values, seq))

    def _audit(self, seq: int | None, request_id: str | None, event: str, record: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO audit (at, seq, request_id, event, record) VALUES (?, ?, ?, ?, ?)",
                        (time.time(), seq, request_id, event, json.dumps(record)))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): a batch's records land together or not at all."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
