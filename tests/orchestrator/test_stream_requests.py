"""Request parsing and validation, the item index, the synthetic generator, `--follow` reading, the real sources."""

from __future__ import annotations

import json
import threading
import time

import pytest

from orchestrator.data.synthetic import make_synthetic_data
from orchestrator.stream.requests import (BadLine, ContentHasher, ItemIndex, UnlearningRequest, parse_line,
                                          read_lines, synthetic_requests)
from orchestrator.stream.config import StreamConfig, SyntheticRequests

SECRET = "The secret answer nobody may read"
HASHER = ContentHasher(b"k" * 32)


def test_a_good_line_becomes_a_request_with_ids_texts_and_override():
    line = json.dumps({"id": "r1", "arrival": 2.5, "items": ["person-019", {"text": SECRET}],
                       "method": {"name": "ga", "lr": 0.5, "epochs": 2}})
    request = parse_line(line, 7, HASHER)
    assert isinstance(request, UnlearningRequest)
    assert (request.id, request.line, request.arrival, request.items, request.texts) == (
        "r1", 7, 2.5, ("person-019",), (SECRET,))
    assert request.method.name == "ga" and request.method.lr == 0.5 and request.method.epochs == 2
    assert parse_line(json.dumps({"id": "r2", "items": ["x"], "method": "npo"}), 1, HASHER).method.name == "npo"
    assert parse_line("   ", 3, HASHER) is None


@pytest.mark.parametrize("line, reason", [
    ('{"id": "r1", "items": ["' + SECRET + '"', "not valid JSON"),
    (json.dumps([SECRET]), "expected a JSON object"),
    (json.dumps({"items": [SECRET]}), "'id'"),
    (json.dumps({"id": "r1", "items": [], "text": SECRET}), "unknown key"),
    (json.dumps({"id": "r1", "items": []}), "'items' must be a non-empty list"),
    (json.dumps({"id": "r1", "items": [{"txt": SECRET}]}), "items[0]"),
    (json.dumps({"id": "r1", "arrival": -1, "items": ["a"]}), "'arrival'"),
    (json.dumps({"id": "r1", "items": ["a"], "method": {"name": "no-such-method", "hparams": {"x": SECRET}}}),
     "'method'"),
])
def test_a_bad_line_is_a_bad_line_whose_reason_holds_no_text(line, reason):
    bad = parse_line(line, 4, HASHER)
    assert isinstance(bad, BadLine)
    assert reason in bad.reason and bad.reason.startswith("line 4:")
    assert SECRET not in bad.reason and len(bad.content_hash) == 64


def test_items_resolve_by_example_id_subject_key_or_inline_text():
    data = make_synthetic_data(seed=0, n_people=20, questions_per_person=4)
    index = ItemIndex(data, HASHER)
    person = data.forget[0].id.split("/")[0]
    request = UnlearningRequest("r", 1, items=(person, data.retain[0].id, "person-999"), texts=(SECRET,))
    examples, unknown = index.resolve(request)
    assert unknown == ["person-999"]
    assert [e.id for e in examples[:4]] == [f"{person}/q{i}" for i in range(4)]
    assert examples[4] == data.retain[0]
    assert examples[5].kind == "text" and examples[5].id.startswith("text:") and SECRET not in examples[5].id


def test_the_generator_makes_one_person_per_request_with_poisson_arrivals():
    data = make_synthetic_data(seed=0, n_people=100)
    requests = synthetic_requests(data, SyntheticRequests(count=10, rate=0.5, seed=0))
    forget_people = list(dict.fromkeys(e.id.split("/")[0] for e in data.forget))
    assert [r.items for r in requests] == [(p,) for p in forget_people]
    arrivals = [r.arrival for r in requests]
    assert arrivals == sorted(arrivals) and len(set(arrivals)) == 10
    assert 5 < arrivals[-1] < 60  # ten exponential gaps of mean 2 s
    assert synthetic_requests(data, SyntheticRequests(count=10, rate=0.5, seed=0)) == requests
    with pytest.raises(ValueError, match="only 100 people"):
        synthetic_requests(data, SyntheticRequests(count=101))


def test_follow_reads_lines_appended_later_and_waits_for_a_half_written_line(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text('{"id": "a"}\n')

    def writer():
        time.sleep(0.3)
        with open(path, "a") as f:
            f.write('{"id": "b"}\n{"id": ')
            f.flush()
            time.sleep(0.3)
            f.write('"c"}\n')

    thread = threading.Thread(target=writer)
    thread.start()
    lines = list(read_lines(path, follow=True, idle_exit_s=1.0, poll_s=0.02))
    thread.join()
    assert lines == [(1, '{"id": "a"}'), (2, '{"id": "b"}'), (3, '{"id": "c"}')]
    # Without follow, the file as it is now.
    assert [n for n, _ in read_lines(path)] == [1, 2, 3]


def test_the_stream_config_refuses_impossible_combinations():
    with pytest.raises(ValueError, match="needs stream.requests"):
        StreamConfig(source="file").check_runnable()
    with pytest.raises(ValueError, match="reads a file"):
        StreamConfig(follow=True)
    with pytest.raises(ValueError, match="twice"):
        StreamConfig(methods=[{"name": "ga"}, {"name": "ga"}])
    with pytest.raises(ValueError):
        StreamConfig(methods=[{"name": "ga", "lr": -1}])


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def to_list(self):
        return self.rows


def test_muse_sust_becomes_four_requests_of_inline_texts(monkeypatch):
    import datasets

    from orchestrator.stream.sources import muse_sust_requests

    calls = []

    def fake_load_dataset(path, config, split):
        calls.append((path, config, split))
        return _Rows([{"text": f"news {split} {i}"} for i in range(3)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    requests = muse_sust_requests("muse-bench/MUSE-News")
    assert calls == [("muse-bench/MUSE-News", "sust", f"forget_{i}") for i in range(1, 5)]
    assert [r.id for r in requests] == [f"muse-sust-forget_{i}" for i in range(1, 5)]
    assert requests[2].texts == ("news forget_3 0", "news forget_3 1", "news forget_3 2") and not requests[2].items


def test_muse_scal_becomes_four_requests_of_what_each_nested_split_adds(monkeypatch):
    import datasets

    from orchestrator.config import ConfigError
    from orchestrator.stream.sources import muse_scal_requests

    def fake_load_dataset(path, config, split):
        assert config == "scal"
        size = int(split.removeprefix("forget_"))
        return _Rows([{"text": f"news {i}"} for i in range(2 * size)])  # forget_k: the first 2k articles

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    requests = muse_scal_requests("muse-bench/MUSE-News")
    assert [r.id for r in requests] == [f"muse-scal-forget_{i}" for i in range(1, 5)]
    assert requests[0].texts == ("news 0", "news 1") and requests[3].texts == ("news 6", "news 7")

    def not_nested(path, config, split):
        return _Rows([{"text": f"news {split}"}])

    monkeypatch.setattr(datasets, "load_dataset", not_nested)
    with pytest.raises(ValueError, match="'forget_2' .* does not contain the previous split: not nested"):
        muse_scal_requests("muse-bench/MUSE-News")

    def offline(path, config, split):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError, match="set stream.muse_path to a local copy"):
        muse_scal_requests("muse-bench/MUSE-News")


def test_tofu_nested_splits_become_requests_for_the_new_authors(monkeypatch):
    import datasets

    from orchestrator.stream.sources import tofu_nested_requests

    def fake_load_dataset(path, config, split):
        authors = {"forget01": 2, "forget05": 10, "forget10": 20}[config]
        first = 200 - authors  # the forget authors are TOFU's last
        return _Rows([{"question": f"q {first + i // 20} {i % 20}", "answer": "a"} for i in range(authors * 20)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    requests = tofu_nested_requests("locuslab/TOFU")
    assert [r.id for r in requests] == ["tofu-forget01", "tofu-forget05", "tofu-forget10"]
    assert requests[0].items == ("tofu-author-198", "tofu-author-199")
    assert requests[1].items == tuple(f"tofu-author-{a}" for a in range(190, 198))
    assert requests[2].items == tuple(f"tofu-author-{a}" for a in range(180, 190))


def test_a_yaml_with_source_file_may_leave_the_requests_file_to_the_command_line(tmp_path):
    from orchestrator.config import ConfigError, load_config
    from orchestrator.stream.driver import stream_config

    path = tmp_path / "stream.yaml"
    path.write_text("name: s\nstream: {source: file, methods: [{name: ga}]}\n")
    config = load_config(path)  # loads: --requests may still name the file
    assert stream_config(config, requests="requests.jsonl").requests == "requests.jsonl"
    with pytest.raises(ConfigError, match="needs stream.requests .* or --requests"):
        stream_config(config)


# --- lines that once killed the whole stream (and killed it again on every restart) are quarantined ---------------
@pytest.mark.parametrize("line, reason", [
    ('{"id": "r1", "items": ["person-001"], "arrival": 1' + "0" * 400 + "}", "'arrival' must be a number"),
    ('{"id": "r1", "items": ["person-001"], "arrival": 1e400}', "'arrival' must be a number"),
    ('{"id": "r1", "items": ["person-001"], "arrival": 9e9}', "'arrival' must be a number"),
    ('{"id": "r1", "items": ["person-001"], "n": ' + "7" * 5000 + "}", "a number too long to read"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_a_hostile_line_is_quarantined_not_fatal(line, reason):
    bad = parse_line(line, 5, HASHER)
    assert isinstance(bad, BadLine) and reason in bad.reason


def test_a_line_with_a_byte_that_is_not_utf8_is_quarantined_and_the_next_line_is_read(tmp_path):
    good = json.dumps({"id": "r2", "items": ["person-001"]})
    path = tmp_path / "requests.jsonl"
    # The bad byte sits past the first 8 KB, where a chunked decoder of the whole file once failed.
    path.write_bytes(b'{"id": "r1", "items": ["' + b"x" * 9000 + b'\xe9"]}\n' + good.encode() + b"\n")
    parsed = [parse_line(text, number, HASHER) for number, text in read_lines(path)]
    assert isinstance(parsed[0], BadLine) and "not UTF-8" in parsed[0].reason and len(parsed[0].content_hash) == 64
    assert isinstance(parsed[1], UnlearningRequest) and parsed[1].id == "r2"


def test_content_hashes_are_keyed_by_the_stream_folders_secret(tmp_path):
    """A short text (a name, a phone number) cannot be confirmed by hashing a guess: without the folder's key the
    hashes the ledger keeps say nothing."""
    import hashlib

    hasher = ContentHasher.of_folder(tmp_path)
    key = tmp_path / "content.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert ContentHasher.of_folder(tmp_path)("Jane") == hasher("Jane")  # the same key on a restart
    assert hasher("Jane") != hashlib.sha256(b"Jane").hexdigest()
    assert ContentHasher.of_folder(tmp_path / "other")("Jane") != hasher("Jane")
    example = ItemIndex(make_synthetic_data(seed=0, n_people=2, questions_per_person=1), hasher).resolve(
        UnlearningRequest("r", 1, texts=("Jane",)))[0][0]
    assert example.id == f"text:{hasher('Jane')[:16]}"
