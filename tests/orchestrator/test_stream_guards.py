"""What a stream refuses before it writes anything (issue 26's faults 4, 5 and 10, reproduced without Ray):
a second writer on the same folder, a resume under another config, and a start recorded in two commits."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.config import ConfigError, parse_config
from orchestrator.stream.config import StreamMethod
from orchestrator.stream.ledger import LEDGER_FILE, Ledger

HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
handle.write("pid 4242\\n"); handle.flush()
print("locked", flush=True)
time.sleep(60)
"""


def _no_ray(*args, **kwargs):
    raise AssertionError("the stream went on to start Ray")


def test_a_second_stream_on_the_same_folder_is_refused_in_one_line(tmp_path, monkeypatch):
    """Reproduced on the code before the lock: a second `unlearn stream` on the same folder requeued the first one's
    running batch and applied its request again. Now the second process is refused before it starts Ray."""
    from orchestrator.run import ray_session
    from orchestrator.stream import driver

    monkeypatch.setattr(ray_session, "connect_ray", _no_ray)
    output = tmp_path / "stream"
    output.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output / driver.LOCK_FILE)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = parse_config({"output_dir": str(output), "stream": {"methods": [{"name": "ga"}]}})
        with pytest.raises(ConfigError, match=r"another `unlearn stream` is writing to .*stream \(pid 4242\)"):
            driver.run_stream(config, progress=lambda m: None)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_goes_with_its_holder(tmp_path):
    from orchestrator.stream.driver import single_writer

    with single_writer(tmp_path):
        with pytest.raises(ConfigError, match="one writer at a time"):
            with single_writer(tmp_path):
                pass
    with single_writer(tmp_path):  # released: the next writer gets it
        assert (tmp_path / "stream.lock").read_text().startswith("pid ")


def _method_stream(config, folder: Path):
    from orchestrator.data.synthetic import make_synthetic_data
    from orchestrator.stream.driver import stream_config
    from orchestrator.stream.method_stream import MethodStream

    prepared = SimpleNamespace(data=make_synthetic_data(n_people=4, questions_per_person=2, seed=0),
                               target_dir=str(folder / "target"), tokenizer_dir="unused", template=None)
    return MethodStream(config, stream_config(config), StreamMethod(name="ga"), prepared, None, folder,
                        workers=None, progress=lambda m: None)


def test_a_stream_resumed_under_another_config_is_refused(tmp_path):
    first = parse_config({"stream": {"methods": [{"name": "ga"}]}, "train": {"lr": 1e-4}})
    folder = tmp_path / "ga"
    ledger = Ledger(folder / LEDGER_FILE)
    from orchestrator.stream.method_stream import resolved_method, stream_identity

    method = resolved_method(StreamMethod(name="ga"), first)
    ledger.set_metas({"started_at": 1.0, "method": method, "identity": stream_identity(first, _method_stream(
        first, folder).cfg, method)})
    ledger.close()
    changed = parse_config({"stream": {"methods": [{"name": "ga"}], "utility_floor": 0.9}, "train": {"lr": 3e-4}})
    with pytest.raises(ConfigError, match=r"holds a stream of another config \(differing: .*lr.*utility_floor"):
        _method_stream(changed, folder).run()


def test_the_stream_start_is_one_commit(tmp_path):
    """`baseline` and `serving_since` are written together: a kill between two commits once left every due time
    infinite."""
    ledger = Ledger(tmp_path / LEDGER_FILE)
    with pytest.raises(TypeError):
        ledger.set_metas({"baseline": {"model_utility": 0.5}, "serving_since": object()})  # not JSON: fails midway
    assert ledger.get_meta("baseline") is None and ledger.get_meta("serving_since") is None
    ledger.close()


def _file_stream(tmp_path: Path, lines: list[str]):
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(line + "\n" for line in lines))
    config = parse_config({"stream": {"methods": [{"name": "ga"}], "source": "file", "requests": str(requests)}})
    return _method_stream(config, tmp_path / "out" / "ga"), requests


def _line(request_id: str, person: str) -> str:
    import json

    return json.dumps({"id": request_id, "items": [person]})


def test_a_changed_source_line_is_refused_on_restart(tmp_path):
    """Lines were matched by number only: an edited file was silently taken as the one the ledger recorded."""
    import threading

    stream, requests = _file_stream(tmp_path, [_line("r1", "person-000"), _line("r2", "person-001")])
    ledger = Ledger(stream.folder / LEDGER_FILE)
    stream.last_seq_at_start, stream.read_upto = 0, 0
    for seq, parsed in stream._source(threading.Event()):
        stream._receive(ledger, seq, parsed)
    requests.write_text(_line("r1", "person-000") + "\n" + _line("r2", "person-002") + "\n")  # line 2 edited
    stream.last_seq_at_start, stream.read_upto = ledger.last_seq(), 0
    seen = list(stream._source(threading.Event()))
    stream._receive(ledger, *seen[0])  # the same line 1: accepted
    with pytest.raises(ConfigError, match="source changed: line 2 is not the line the ledger received"):
        stream._receive(ledger, *seen[1])
    ledger.close()


def test_a_source_shorter_than_the_ledger_is_refused_before_any_dispatch(tmp_path):
    """A restart once dispatched requeued requests before the reader had read their lines (a KeyError); now the
    loop waits for the lines the ledger holds, and a source that no longer has them is refused."""
    import threading

    stream, requests = _file_stream(tmp_path, [_line("r1", "person-000"), _line("r2", "person-001")])
    ledger = Ledger(stream.folder / LEDGER_FILE)
    stream.last_seq_at_start, stream.read_upto = 0, 0
    for seq, parsed in stream._source(threading.Event()):
        stream._receive(ledger, seq, parsed)
    requests.write_text(_line("r1", "person-000") + "\n")  # line 2 gone
    stream.last_seq_at_start, stream.read_upto = ledger.last_seq(), 0
    stream.workers = SimpleNamespace(submit=lambda *a, **k: pytest.fail("dispatched before the source caught up"))
    with pytest.raises(ConfigError, match="it ends at line 1, and the ledger received lines up to 2"):
        stream._loop(ledger)
    ledger.close()


def test_pruning_keeps_the_last_applied_checkpoint_whatever_was_written_after_it(tmp_path):
    """`keep_checkpoints: 1` once let Ray Train delete the last applied checkpoint when the process died between a
    new checkpoint's report and the ledger's record of it: the stream could not resume. Checkpoints are now pruned
    only after the ledger records a batch, and never the last applied one."""
    config = parse_config({"stream": {"methods": [{"name": "ga"}], "keep_checkpoints": 1}})
    stream = _method_stream(config, tmp_path / "ga")
    ledger = Ledger(stream.folder / LEDGER_FILE)
    folders = []
    for seq in (1, 2, 3):
        ledger.receive(seq, f"r{seq}", 0.0, [f"person-00{seq}"], {}, None)
        batch = ledger.start_batch([seq], {"name": "ga"}, ledger.last_checkpoint())
        folder = stream.folder / "checkpoints" / f"batch-{batch:05d}"
        folder.mkdir(parents=True)
        folders.append(folder)
        if seq < 3:
            ledger.finish_batch(batch, "applied", str(folder), {}, {}, {})
    # Batch 3 wrote its checkpoint and the process died before the ledger recorded it (abandoned on restart).
    stream._prune_checkpoints(ledger)
    assert not folders[0].exists() and folders[1].exists() and folders[2].exists()
    assert ledger.last_checkpoint() == str(folders[1])
    ledger.close()


ZERO3 = str(Path(__file__).resolve().parents[2] / "cluster" / "deepspeed" / "zero3.json")


@pytest.mark.parametrize("sections, message", [
    ({"train": {"lora": {"rank": 8}}}, "adapters (train.lora) would be laid over it per request"),
    ({"stream": {"methods": [{"name": "ihl_fila"}]}}, "adapters (ihl_fila) would be laid over it per request"),
    ({"stream": {"methods": [{"name": "ga"}, {"name": "rmu"}]}}, "method 'rmu' keeps a frozen copy of the model"),
    ({"stream": {"methods": [{"name": "ofmu"}]}}, "method 'ofmu' with hparams {} cannot run under DeepSpeed"),
])
def test_what_a_sharded_stream_cannot_do_is_refused_in_one_line_before_ray(tmp_path, monkeypatch, sections, message):
    """Under train.deepspeed the stream keeps one engine over its model: no adapters per request, no second whole
    copy for a method that keeps its reference, no method that sets gradients outside the optimizer step."""
    from orchestrator.run import ray_session
    from orchestrator.stream import driver

    monkeypatch.setattr(ray_session, "connect_ray", _no_ray)
    raw = {"output_dir": str(tmp_path / "out"), "train": {"deepspeed": ZERO3, **sections.get("train", {})},
           "stream": {"methods": [{"name": "ga"}], **sections.get("stream", {})}}
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        driver.run_stream(parse_config(raw), progress=lambda m: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
