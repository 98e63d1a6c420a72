"""Progress: bars at a terminal, one plain line per epoch / evaluation / trial / request elsewhere, nothing when off;
the sweep's and the stream's live tables drawn from states made by hand."""

from __future__ import annotations

import os
import re
import time
from types import SimpleNamespace

import pytest

from orchestrator.data.tokenize import EncodedRow
from orchestrator.observe.progress import MODE_ENV, Steps, progress_mode, render_text, seconds
from tests.orchestrator.test_evaluation import tokenizer, unlearning_data  # noqa: F401 (fixtures)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    return ANSI.sub("", text)


@pytest.fixture
def terminal():
    """A real terminal (a pseudo-terminal's end) and a file that is not one."""
    leader, follower = os.openpty()
    with open(follower, "w") as tty:
        yield tty
    os.close(leader)


def test_bars_only_when_stdout_and_stderr_are_both_a_terminal(terminal, tmp_path):
    with open(tmp_path / "log", "w") as log:
        assert progress_mode({}, (terminal, terminal)) == "bars"
        assert progress_mode({}, (log, terminal)) == "lines"  # `unlearn run > out.txt`
        assert progress_mode({}, (terminal, log)) == "lines"  # `2> log`
        assert progress_mode({}, (log, log)) == "lines"
    assert progress_mode({"TERM": "dumb"}, (terminal, terminal)) == "lines"


def test_the_environment_overrides_the_choice(terminal):
    for value in ("bars", "lines", "off"):
        assert progress_mode({MODE_ENV: value}, (terminal, terminal)) == value
        assert progress_mode({MODE_ENV: value.upper()}, (object(), object())) == value  # no isatty at all: lines
    with pytest.raises(ValueError, match=r"RAY_UNLEARN_PROGRESS='loud': expected one of bars, lines, off"):
        progress_mode({MODE_ENV: "loud"})


def test_pytests_capture_is_not_a_terminal(monkeypatch):
    monkeypatch.delenv(MODE_ENV, raising=False)
    assert progress_mode() == "lines"


def rows(n: int, offset: int = 0) -> list[EncodedRow]:
    return [EncodedRow(input_ids=[1, 5 + i % 7, 6, 7, 2], labels=[-100, 5 + i % 7, 6, 7, 2], index=offset + i)
            for i in range(n)]


def test_finetune_gives_one_plain_line_per_epoch(tiny_model, monkeypatch):
    from orchestrator.models.finetune import finetune

    monkeypatch.setenv(MODE_ENV, "lines")
    lines: list[str] = []
    finetune(tiny_model, rows(4), 0, epochs=4, lr=1e-3, batch_size=2, progress=lines.append, label="target model")
    assert [line.split(" loss ")[0] for line in lines] == [f"target model: epoch {e}/4" for e in range(1, 5)]
    assert not any("\r" in line for line in lines)


def test_finetune_off_says_nothing(tiny_model, monkeypatch, capsys):
    from orchestrator.models.finetune import finetune

    monkeypatch.setenv(MODE_ENV, "off")
    lines: list[str] = []
    finetune(tiny_model, rows(4), 0, epochs=2, lr=1e-3, batch_size=2, progress=lines.append)
    assert lines == [] and capsys.readouterr() == ("", "")


def test_a_bar_redraws_a_few_times_a_second_and_leaves_one_line(capsys):
    steps = Steps("pretraining", total=2000, mode="bars")
    for _ in range(2000):  # a fast loop: well under the half second between redraws
        steps.advance()
    steps.describe("epoch 1/1 loss 1.234")
    steps.close()
    err = capsys.readouterr().err
    assert err.count("\r") <= 4  # the first draw, perhaps one more, the last: not one per step
    assert err.endswith("\n") and err.count("\n") == 1
    last = err.rstrip("\n").split("\r")[-1]
    assert "pretraining" in last and "2000/2000" in last and "loss 1.234" in last


def test_the_unlearning_loop_prints_one_line_per_epoch_on_rank_0(capsys, tmp_path):
    """The real worker loop inside a real Ray Train run (its local mode: in this process, no cluster)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.worker.batching import UnlearningRows
    from orchestrator.config import TrainConfig
    from orchestrator.models.loading import tiny_llama
    from orchestrator.worker.job import TrainJob, WorkerSettings
    from orchestrator.worker.loop import UnlearningWorker

    def loop(config):
        worker = UnlearningWorker(config["job"])
        worker.build(tiny_llama(64, seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
        worker.train()

    train = WorkerSettings(**{**TrainConfig().model_dump(), "lr": 1e-3, "epochs": 3, "batch_size": 2, "log_every": 1})
    for mode, expected in (("lines", 3), ("off", 0)):
        job = TrainJob(target_dir="unused", method_name="ga", method_hparams={}, train=train,
                       rows=UnlearningRows(forget=rows(6)), pad_token_id=0, progress=mode)
        TorchTrainer(loop, train_loop_config={"job": job}, scaling_config=ScalingConfig(num_workers=0),
                     run_config=RunConfig(name=f"progress-{mode}", storage_path=str(tmp_path))).fit()
        out = capsys.readouterr().out
        lines = [line for line in out.splitlines() if line.startswith("[unlearn]")]
        assert [line.split(" loss ")[0] for line in lines] == [f"[unlearn] epoch {e}/3 step 3/3"
                                                               for e in range(1, expected + 1)], out
        assert "\r" not in out


def test_an_evaluation_gives_one_line_when_it_ends(tokenizer, unlearning_data):
    from orchestrator.data.tokenize import PromptTemplate
    from orchestrator.evaluation import EvalSettings, evaluate_model
    from orchestrator.models.loading import tiny_llama

    model = tiny_llama(len(tokenizer), seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    lines: list[str] = []
    steps = Steps("target model evaluation", unit="example", mode="lines", emit=lines.append)
    evaluate_model(model, tokenizer, unlearning_data, PromptTemplate(),
                   EvalSettings(max_examples=2, max_forget_examples=2, max_new_tokens=2), progress=steps)
    assert len(lines) == 1 and lines[0].startswith("target model evaluation: ")
    assert " examples in " in lines[0] and "forget ROUGE-L" in lines[0]
    assert steps.n == 3 * int(re.search(r"(\d+) examples", lines[0]).group(1))  # three passes per split


# --- sweeps -----------------------------------------------------------------------------------------------------

def trial(trial_id, status, method="npo", lr=1e-4, seed=0, **result):
    return SimpleNamespace(trial_id=trial_id, status=status, config={"cell": {"method": method, "params": {"lr": lr}},
                                                                     "seed": seed}, last_result=result)


def test_the_sweep_table_counts_trials_and_shows_the_best_so_far():
    from orchestrator.sweep.monitor import SweepBoard

    board = SweepBoard("all", total=8, started=time.monotonic() - 75)
    board.update([trial("a", "TERMINATED", score=0.41, rouge_efficacy=0.5, utility=0.35),
                  trial("b", "TERMINATED", method="ga", lr=3e-4, seed=1, score=0.813, rouge_efficacy=0.78,
                        utility=0.85),
                  trial("c", "ERROR"), trial("d", "RUNNING", loss=1.2), trial("e", "PENDING")])
    assert (board.done, board.failed, board.running, board.pending) == (2, 1, 1, 4)  # 1 known + 3 not yet made
    text = plain(render_text(board.table(), width=80))
    assert facts(text) == {
        "trials": "2/8 done · 1 running · 1 failed · 4 pending",
        "best": "0.813 (efficacy 0.780, utility 0.850): ga lr=0.0003 seed 1 (b)",
        "elapsed": "1 min 15 s"}, text
    assert text.splitlines()[0].strip() == "sweep study 'all'"
    assert max(map(len, text.splitlines())) <= 80


def facts(text: str) -> dict[str, str]:
    """A facts table's rows as {name: value}."""
    rows = [line.strip().split(None, 1) for line in text.splitlines()[1:] if line.strip()]
    return {row[0]: row[1] for row in rows if len(row) == 2}


def test_one_line_per_finished_trial_and_none_per_result():
    from orchestrator.sweep.monitor import SweepBoard, SweepMetricsCallback, watch

    lines: list[str] = []
    monitor = SweepMetricsCallback("study")
    a = trial("a", "RUNNING", score=0.7, rouge_efficacy=0.6, utility=0.84, seconds=48.0)
    b = trial("b", "RUNNING", step=4)
    c = trial("c", "RUNNING")
    with watch(SweepBoard("study", total=3), lines.append) as board:
        for t in (a, b, c):
            monitor.on_trial_start(0, [a, b, c], t)
        monitor.on_trial_result(0, [a, b, c], a, a.last_result)
        monitor.on_trial_complete(0, [a, b, c], a)
        monitor.on_trial_complete(0, [a, b, c], b)
        monitor.on_trial_error(0, [a, b, c], c)
        a.status, b.status, c.status = "TERMINATED", "TERMINATED", "ERROR"
        monitor.on_step_end(0, [a, b, c])
    assert (board.done, board.failed, board.running, board.pending) == (2, 1, 0, 0)
    assert lines == [
        "trial npo lr=0.0001 seed 0 (a): score 0.700 (efficacy 0.600, utility 0.840) in 48.0 s; 1/3 done, best 0.700",
        "trial npo lr=0.0001 seed 0 (b): stopped early at step 4; 2/3 done, best 0.700",
        "trial npo lr=0.0001 seed 0 (c): failed (Tune's error report names its file); 2/3 done, 1 failed, best 0.700",
    ]
    monitor.on_trial_complete(0, [a, b, c], a)  # no longer watched: no line
    assert len(lines) == 3


# --- streams ----------------------------------------------------------------------------------------------------

def test_the_stream_table_shows_outcomes_queue_latency_and_drift():
    from orchestrator.stream.board import StreamBoard

    board = StreamBoard("books", "npo", started=time.monotonic() - 12)
    for state, latency, drift in (("applied", 4.0, -0.01), ("applied", 6.0, -0.02), ("rolled_back", 9.5, -0.2),
                                  ("failed", 1.0, None), ("applied", 5.0, -0.031)):
        board.record(state, latency, drift)
    board.record("quarantined")
    board.queued, board.running = 3, 1
    text = plain(render_text(board.table(), width=80))
    assert text.splitlines()[0].strip() == "stream 'books', method npo"
    assert facts(text) == {
        "requests": "3 applied · 1 failed · 1 rolled back · 1 quarantined",
        "waiting": "3 queued · 1 running",
        "latency": "last 5.0 s · p50 5.0 s",
        "drift": "-0.0310 (model utility against the original's)",
        "elapsed": "12.0 s"}, text
    assert max(map(len, text.splitlines())) <= 80


def test_the_stream_table_starts_from_the_ledger(tmp_path):
    from orchestrator.stream.board import StreamBoard
    from orchestrator.stream.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.quarantine(1, "r-1", "bad line", {})
        ledger.receive(2, "r-2", 0.0, [], {}, None)
        board = StreamBoard("s", "ga")
        board.count_from(ledger)
    finally:
        ledger.close()
    assert board.counts == {"applied": 0, "failed": 0, "rolled_back": 0, "quarantined": 1} and board.queued == 1


def test_durations_read_as_a_person_would_say_them():
    assert [seconds(v) for v in (None, 4.25, 75, 3720)] == ["-", "4.2 s", "1 min 15 s", "1 h 02 min"]
