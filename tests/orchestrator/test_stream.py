"""`unlearn stream` end to end: real processes, real local Ray, real Ray Train, a tiny real Llama.

- the guard: a destructive request (GA at a huge learning rate) is rolled back and the stream goes on; bad lines,
  unknown items and a duplicate id are quarantined; none of the forget texts reach the ledger, the logs, the
  metrics or the reports;
- the same requests under DeepSpeed ZeRO-3 on 2 workers give the 1-worker plain stream's per-request metrics
  (within 1e-4; measured 4e-8), the destructive one rolled back in both; and a LoRA stream rolls it back too;
- exactly once: the stream process is SIGKILLed after an applied request and again while a request is running,
  restarted each time, and ends with every request applied exactly once and the final metrics of an
  uninterrupted run (within 1e-4: the same seeds, batches and float32 weights from the checkpoint).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.stream.ledger import read_only_rows

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4


def _load_kills():
    """benchmarks/stream_kills.py: the random-kill driver, and the small stream these tests share with it."""
    spec = importlib.util.spec_from_file_location("stream_kills", ROOT / "benchmarks" / "stream_kills.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kills = _load_kills()
SMALL = {**kills.CONFIG, "name": "stream-test", "stream": {"methods": [{"name": "ga"}], "eval_max_per_split": 12}}


def _env(cache: Path) -> dict[str, str]:
    env = {**os.environ, "RAY_UNLEARN_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def _config(tmp_path: Path, train: dict | None = None, **stream) -> Path:
    config = {**SMALL, "stream": {**SMALL["stream"], **stream}, "train": {**SMALL["train"], **(train or {})}}
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _command(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "stream", str(config), "--output", str(out), *extra]


def _ledger_rows(path: Path, query: str) -> list[tuple]:
    return read_only_rows(path, query)


BOOM = 6  # the destructive request's line (GA at lr 50 for 3 epochs: every later request must start before it)
REQUESTS = 10  # requests that name people (4 more lines are bad input)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, stream_cache):
    """The guard's stream: 10 requests naming people, the 6th line destructive, among bad lines (1 plain worker)."""
    from orchestrator.data.synthetic import make_synthetic_data

    tmp_path = tmp_path_factory.mktemp("guarded")
    data = make_synthetic_data(seed=0, n_people=20, questions_per_person=4)
    people = list(dict.fromkeys(e.id.split("/")[0] for e in data.forget + data.retain))
    inline = ["Marguerite Olvani keeps her diaries in a locked blue tin under the stairs.",
              "Her brother Anselm banks with the Corrigan Mutual under account 4471-0093."]
    unknown = "Jane Quarrington lives at 12 Elm Street"  # names no example: never echoed, though quarantined
    lines = [
        json.dumps({"id": "r1", "items": [people[0]]}),
        '{"id": "broken", "items": ["' + data.forget[1].answer,  # malformed, and carrying a forget text
        # 4 QA pairs and 2 texts: every request's rows divide evenly between 2 workers (see the ZeRO-3 test)
        json.dumps({"id": "r2", "items": [people[1], *({"text": text} for text in inline)]}),
        json.dumps({"id": "r1", "items": [people[2]]}),  # duplicate id
        json.dumps({"id": "r3", "items": ["person-999", unknown]}),  # unknown items: an id, a text pasted as one
        json.dumps({"id": "boom", "items": [people[2]], "method": {"name": "ga", "lr": 50.0, "epochs": 3}}),
        *(json.dumps({"id": f"r{i}", "items": [people[i - 1]]}) for i in range(4, REQUESTS + 1)),
    ]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    done = subprocess.run(_command(_config(tmp_path), out, "--requests", str(requests)), cwd=ROOT,
                          env=_env(stream_cache), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"data": data, "people": people, "inline": inline, "unknown": unknown, "requests": requests, "out": out,
            "done": done}


@pytest.mark.slow
def test_guard_rolls_back_a_destructive_request_bad_input_is_quarantined_and_no_text_leaks(guarded):
    data, people, inline, unknown = guarded["data"], guarded["people"], guarded["inline"], guarded["unknown"]
    out, done = guarded["out"], guarded["done"]
    summary = json.loads((out / "stream_summary.json").read_text())
    states = {(r["id"], r["seq"]): (r["state"], r["reason"]) for r in summary["methods"]["ga"]["requests"]}
    assert states[("r1", 1)][0] == "applied" and states[("r2", 3)][0] == "applied"
    # A line that is not JSON has no id to record: it is known by its line and its hash.
    assert states[(None, 2)][0] == "quarantined" and "not valid JSON" in states[(None, 2)][1]
    assert states[("r1", 4)] == ("quarantined", "duplicate id 'r1' (first received at line 1)")
    assert states[("r3", 5)][0] == "quarantined" and "2 unknown item(s), keyed hashes" in states[("r3", 5)][1]
    assert states[("boom", 6)][0] == "rolled_back"
    assert states[("r4", 7)][0] == "applied"  # the stream went on, from the checkpoint before the rollback
    batches = {b["batch"]: b for b in summary["methods"]["ga"]["batches"]}
    boom = next(b for b in batches.values() if b["seqs"] == [6])
    after = next(b for b in batches.values() if b["seqs"] == [7])
    assert boom["state"] == "rolled_back" and boom["checkpoint"] is None
    # r4 started from r2's checkpoint: the destroyed weights never became the latest model.
    db = out / "ga" / "ledger.sqlite"
    base = _ledger_rows(db, f"SELECT base_checkpoint FROM batches WHERE batch = {after['batch']}")[0][0]
    assert base == next(b for b in batches.values() if b["seqs"] == [3])["checkpoint"]
    assert summary["methods"]["ga"]["drift"][-1] > -0.5 * summary["methods"]["ga"]["baseline"]["model_utility"]
    assert (out / "drift.png").exists() and (out / "resurgence_ga.png").exists()

    # No forget text and no unknown item anywhere: ledger (with its WAL), reports, logs.
    named = [e for e in data.forget + data.retain if e.id.split("/")[0] in people[:REQUESTS]]
    secrets = [*inline, unknown, "person-999"] + [e.question for e in named] + [e.answer for e in named]
    texts = {"stdout": done.stdout, "stderr": done.stderr}
    for path in out.rglob("*"):
        if path.is_file() and path.suffix != ".safetensors" and path.suffix != ".png":
            texts[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    assert any(k.endswith("ledger.sqlite") for k in texts) and any("stream_report.md" in k for k in texts)
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"forget text found in {where}"
    audit = _ledger_rows(db, "SELECT event, record FROM audit WHERE request_id = 'r2' AND event = 'applied'")
    record = json.loads(audit[0][1])
    assert record["checkpoint"] and record["evidence"]["after"]["rouge_l"] is not None
    hashes = json.loads(_ledger_rows(db, "SELECT hashes FROM requests WHERE seq = 3")[0][0])
    assert any(k.startswith("text:") for k in hashes) and all(len(h) == 64 for h in hashes.values())


def _stream_of(guarded: dict, tmp_path: Path, stream_cache: Path, train: dict) -> dict:
    """The guard's requests streamed again with other train settings; the GA stream's summary."""
    out = tmp_path / "out"
    done = subprocess.run(_command(_config(tmp_path, train), out, "--requests", str(guarded["requests"])),
                          cwd=ROOT, env=_env(stream_cache), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "stream_summary.json").read_text())["methods"]["ga"]


def _assert_rolled_back_and_went_on(stream: dict) -> None:
    """The destructive request rolled back and the next one applied, at a utility close to the model's before the
    rollback (the destroyed weights were not kept). GA's later requests may roll back too (the utility floor)."""
    states = {r["seq"]: r["state"] for r in stream["requests"] if r["state"] != "quarantined"}
    assert len(states) == REQUESTS and states[BOOM] == "rolled_back" and states[BOOM + 1] == "applied"
    assert list(states.values())[:2] == ["applied", "applied"]
    by_seq = {r["seq"]: r for r in stream["requests"]}
    assert abs(by_seq[BOOM + 1]["model_utility"] - by_seq[3]["model_utility"]) < 0.1


@pytest.mark.slow
def test_a_zero3_stream_on_two_workers_gives_the_plain_streams_metrics(guarded, tmp_path, stream_cache):
    """DeepSpeed ZeRO-3 on 2 workers (batch 2 each) against the guard's 1 plain worker (batch 4): the same global
    batches, since every request's rows divide evenly between the workers (an odd count is padded by wrapping, as
    DistributedSampler does: the 2 workers would train on one row twice and the streams part at that request), so
    every request's metrics agree. Why 1e-4 holds: a ZeRO-3 run's losses match a plain one's to 1e-5
    relative (test_distributed.py: only the order of float32 sums differs); here the engine is kept across
    requests and restarted (no optimizer state) per request, and a rollback scatters rank 0's copy back, so each
    request starts where the plain stream's does. Measured: 4e-8 on utility and forget probability, ROUGE-L equal."""
    zero3 = _stream_of(guarded, tmp_path, stream_cache, {"workers": 2, "batch_size": 2,
                                                  "deepspeed": str(ROOT / "cluster/deepspeed/zero3.json")})
    plain = json.loads((guarded["out"] / "stream_summary.json").read_text())["methods"]["ga"]
    _assert_rolled_back_and_went_on(zero3)
    assert [r["state"] for r in zero3["requests"]] == [r["state"] for r in plain["requests"]]
    for mine, theirs in zip(zero3["requests"], plain["requests"]):
        for side in ("forget_before", "forget_after"):
            assert (mine[side] is None) == (theirs[side] is None) or mine["seq"] == BOOM, (mine["seq"], side)
            if mine[side] and theirs[side]:
                for metric in ("probability", "rouge_l"):
                    assert mine[side][metric] == pytest.approx(theirs[side][metric], abs=TOLERANCE), mine["seq"]
        if mine["state"] == "applied":
            assert mine["model_utility"] == pytest.approx(theirs["model_utility"], abs=TOLERANCE), mine["seq"]


@pytest.mark.slow
def test_a_lora_stream_rolls_back_a_destructive_request(guarded, tmp_path, stream_cache):
    """LoRA adapters laid per request and merged back into the served model; the rollback restores the base weights
    the adapters were merged into."""
    _assert_rolled_back_and_went_on(_stream_of(guarded, tmp_path, stream_cache, {"lora": {"rank": 8}}))


def _final_metrics(out: Path) -> dict:
    s = json.loads((out / "stream_summary.json").read_text())["methods"]["ga"]
    return {"utility": s["model_utility"], "rouge": s["matrix"]["rouge_l"], "probability": s["matrix"]["probability"]}


@pytest.mark.slow
def test_a_stream_killed_twice_resumes_and_applies_every_request_exactly_once(tmp_path, stream_cache):
    config = _config(tmp_path, source="synthetic", synthetic={"count": 4, "rate": 1.0, "seed": 0})
    reference = tmp_path / "reference"
    done = subprocess.run(_command(config, reference), cwd=ROOT, env=_env(stream_cache), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    db = out / "ga" / "ledger.sqlite"
    def applied() -> int:  # 0 until the ledger and its tables exist
        rows = _ledger_rows(db, "SELECT COUNT(*) FROM batches WHERE state = 'applied'")
        return rows[0][0] if rows else 0

    kills = [
        # after the first request was applied (between two requests)
        lambda: applied() >= 1,
        # while a request is running, after a second was applied
        lambda: applied() >= 2 and bool(
            _ledger_rows(db, "SELECT batch FROM batches WHERE state = 'running'")),
    ]
    for i, when in enumerate(kills):
        with open(tmp_path / f"run{i}.log", "w") as log:
            process = subprocess.Popen(_command(config, out), cwd=ROOT, env=_env(stream_cache), stdout=log,
                                       stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 600
            while not when():
                assert process.poll() is None, (tmp_path / f"run{i}.log").read_text()[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.05)
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert not (out / "stream_summary.json").exists()
    last = subprocess.run(_command(config, out), cwd=ROOT, env=_env(stream_cache), capture_output=True, text=True,
                          timeout=900)
    assert last.returncode == 0, last.stderr[-3000:]
    assert "resuming" in last.stderr

    rows = _ledger_rows(db, "SELECT seq, state, batch FROM requests ORDER BY seq")
    assert [(seq, state) for seq, state, _ in rows] == [(s, "applied") for s in (1, 2, 3, 4)]
    batches = _ledger_rows(db, "SELECT batch, seqs, state FROM batches ORDER BY batch")
    applied_seqs = [s for _, seqs, state in batches if state == "applied" for s in json.loads(seqs)]
    assert applied_seqs == [1, 2, 3, 4]  # each exactly once, in order
    assert "abandoned" in {state for _, _, state in batches}  # the kill while running was caught
    events = _ledger_rows(db, "SELECT seq FROM audit WHERE event = 'applied'")
    assert sorted(s for (s,) in events) == [1, 2, 3, 4]

    got, want = _final_metrics(out), _final_metrics(reference)
    assert len(got["utility"]) == len(want["utility"]) == 4
    assert got["utility"] == pytest.approx(want["utility"], abs=TOLERANCE)
    for key in ("rouge", "probability"):
        for row_got, row_want in zip(got[key], want[key]):
            assert [v is None for v in row_got] == [v is None for v in row_want]
            assert [v for v in row_got if v is not None] == pytest.approx(
                [v for v in row_want if v is not None], abs=TOLERANCE)


@pytest.mark.slow
def test_a_file_sourced_stream_killed_at_five_random_moments_applies_every_request_once(tmp_path, stream_cache):
    """benchmarks/stream_kills.py with 5 kills (the script itself does 20): a random delay after each start, so the
    kills land in Ray's start, the serving, a request's training, its evaluation or its checkpoint."""
    assert kills.main(["--kills", "5", "--requests", "4", "--seed", "1", "--workdir", str(tmp_path),
                       "--cache", str(stream_cache)]) == 0
    result = json.loads((tmp_path / "kills.json").read_text())
    assert len(result["kills"]) == 5
    assert result["every_request_applied"] and result["applied_once_in_order"] and result["metrics_equal"]
