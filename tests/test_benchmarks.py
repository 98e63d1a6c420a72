"""The benchmark scripts' own logic: argument parsing, the FLOPs formulas, and the GPU script's code path on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_7b = load_script("gpu_7b")


def test_defaults_and_tiny_overrides():
    args = gpu_7b.parse_args([])
    assert (args.method, args.full, args.lora_rank, args.seq_len, args.peak_tflops) == ("npo", False, 16, 512, 989.0)
    tiny = gpu_7b.parse_args(["--device", "cpu", "--tiny", "--steps", "3"])
    assert (tiny.steps, tiny.warmup, tiny.seq_len, tiny.batch_size) == (3, 0, 32, 2)
    with pytest.raises(SystemExit):
        gpu_7b.parse_args(["--batch-size", "0"])


def test_parameter_counts_match_the_real_modules():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = gpu_7b.llama_config(tiny=True)
    model = AutoModelForCausalLM.from_config(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert gpu_7b.matmul_params(config) == linear
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert gpu_7b.lora_params(config, 8) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # all of Llama-2-7B but the input embedding and the RMSNorm weights
    assert gpu_7b.matmul_params(gpu_7b.llama_config(tiny=False)) == 6_738_415_616 - 32000 * 4096 - 65 * 4096


def test_flops_formulas():
    config = gpu_7b.llama_config(tiny=False)
    n = gpu_7b.matmul_params(config)
    full = gpu_7b.step_flops(config, gpu_7b.parse_args(["--full", "--method", "ga"]), reference_rows=0)
    assert full.trained_tokens == 4 * 512 and full.total == 6 * n * 4 * 512
    lora = gpu_7b.step_flops(config, gpu_7b.parse_args(["--method", "ga", "--lora-rank", "8"]), reference_rows=0)
    assert lora.total == (4 * n + 6 * gpu_7b.lora_params(config, 8)) * 4 * 512
    npo = gpu_7b.step_flops(config, gpu_7b.parse_args(["--full"]), reference_rows=4)
    assert npo.trained_tokens == 8 * 512  # forget + retain rows
    assert npo.total == 6 * n * 8 * 512 + 2 * n * 4 * 512
    assert "2 N per forget token" in npo.formula


def test_dry_run_prints_the_formula(capsys):
    assert gpu_7b.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(4 N + 6 N_lora) per trained token" in out and "6,607,077,376" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_it_fails_with_a_clear_message(capsys):
    assert gpu_7b.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_tiny_cpu_mode_runs_two_steps(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29731"}
    done = subprocess.run([sys.executable, "benchmarks/gpu_7b.py", "--device", "cpu", "--tiny", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["step_ms"] > 0 and result["mfu"] > 0 and result["tokens_per_s"] > 0
    assert result["flops"]["trained_tokens"] == 2 * 2 * 32
    assert result["planned_step_gib"] > 0  # the planner runs on the same set-up
    assert "MFU" in done.stdout


def test_step_time_rejects_unknown_methods_before_preparing():
    import methods

    step_time = load_script("step_time")
    with pytest.raises(methods.MethodConfigError):
        step_time.main(["--methods", "nope"])


overhead = load_script("overhead")


def test_overhead_splits_the_wall_time():
    row = overhead.split_wall(40.0, {"train_loop": 22.0, "evaluate": 6.0, "prepare": 0.1})
    assert row == {"wall_s": 40.0, "train_loop_s": 22.0, "evaluation_s": 6.0, "overhead_s": 12.0,
                   "overhead_ratio": 0.3}
    args = overhead.parse_args(["--small", "--calls", "2", "--set", "train.lr=1e-4"])
    config = overhead.build_config(args)
    assert config.train.epochs == 1 and config.train.lr == 1e-4 and config.model.tiny.num_layers == 1
    with pytest.raises(SystemExit):
        overhead.parse_args(["--calls", "0"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--resident"]], ids=["trainer-per-call", "resident"])
def test_overhead_small_calls_run(tmp_path, mode):
    out = tmp_path / "rows.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_UNLEARN_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "benchmarks/overhead.py", "--small", "--calls", "2", "--output",
                           str(tmp_path / "runs"), "--json", str(out), *mode], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["call"] for r in rows] == [0, 1]
    for r in rows:
        assert r["wall_s"] == pytest.approx(r["train_loop_s"] + r["evaluation_s"] + r["overhead_s"], abs=0.02)
        assert r["train_loop_s"] > 0 and r["evaluation_s"] > 0 and r["timings"]["ray_train_start"] > 0
    assert "overhead s" in done.stdout
    assert ("mode: resident workers" if mode else "mode: a TorchTrainer per call") in done.stdout


text_grid = load_script("text_grid")


def test_text_grid_reads_its_grid_and_writes_another_shelf(tmp_path):
    args = text_grid.parse_args(["--lr", "1e-5,3e-5", "--shelf", "5,6,7,8"])
    assert args.space == {"gamma": [3, 10, 30]} and args.lrs == [1e-5, 3e-5] and args.shelves == [[5, 6, 7, 8]]
    assert text_grid.parse_args(["--method", "npo", "--grid", "beta=0.1,0.5"]).space == {"beta": [0.1, 0.5]}
    for bad in (["--grid", "gamma"], ["--shelf", "5,6,7"], ["--shelf", "5,5,6,7"]):
        with pytest.raises(SystemExit):
            text_grid.parse_args(bad)
    config = text_grid.shelf_config([5, 6, 7, 8], tmp_path)
    assert config.name == "text-books-5-6-7-8" and config.data.source == "text"
    assert Path(config.data.text.forget).name == "book-5.txt" and Path(config.data.text.forget).is_file()
    assert [Path(p).name for p in config.data.text.retain] == ["book-6.txt", "book-7.txt", "book-8.txt"]
    assert text_grid.ratios({"verbatim_memorisation": 0.8, "retain_verbatim_memorisation": 1.0},
                            {"verbatim_memorisation": 0.2, "retain_verbatim_memorisation": 0.9}) == (0.25, 0.9)


def test_the_method_table_over_seeds_gives_spreads_and_per_seed_verdicts(tmp_path, capsys):
    from types import SimpleNamespace

    table = load_script("method_table")
    assert table._spread([0.1, 0.3, 0.2]) == "0.200±0.100" and table._spread([None]) == "-"
    before = {"forget_rouge_l": 1.0, "retain_rouge_l": 1.0}

    def run(method, forget, retain):
        after = {"forget_rouge_l": forget, "retain_rouge_l": retain, "forget_probability": 0.1,
                 "model_utility": 0.5, "mia_auc": 0.5}
        return SimpleNamespace(method=method, before=before, after=after, attacks=None, retain_model=None)

    rows = [run("npo", 0.3, 0.9), run("npo", 0.4, 0.95), run("undial", 0.3, 0.9), run("undial", 0.6, 0.9)]
    assert table._seed_table(rows, [0, 1], str(tmp_path), prepared=None) == 0
    printed = capsys.readouterr().out
    assert "ok 2/2" in printed and "mixed 1/2" in printed and "0.350±0.050" in printed
    saved = json.loads((tmp_path / "table.json").read_text())
    assert [m["verdict"] for m in saved["methods"]] == ["ok 2/2", "mixed 1/2"]


@pytest.mark.slow
def test_side_by_side_tiny_trains_both_sides_on_the_same_rows(tmp_path):
    side_by_side = load_script("side_by_side")
    assert side_by_side.data_shape(2, 8) == {"data.forget_fraction": 0.1, "data.synthetic.n_people": 20,
                                             "data.synthetic.questions_per_person": 8}
    out = tmp_path / "figures.json"
    env = {**os.environ, "RAY_UNLEARN_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "benchmarks/side_by_side.py", "--preset", "tiny", "--steps", "2",
                           "--workdir", str(tmp_path / "work"), "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    for side in ("theirs", "ours"):
        row = figures[side]
        assert row["steps"] == 2 and row["tokens_per_second"] > 0 and row["peak_memory_bytes"] > 0
        assert row["wall_seconds"] > 0
    assert figures["ours"]["tokens"] == figures["theirs"]["tokens"]  # the very same batches
    assert figures["ratios"]["tokens_per_second"] > 0
    printed = done.stdout.splitlines()
    assert any(line.startswith("theirs ") for line in printed) and any(line.startswith("ours ") for line in printed)
    assert "ours/theirs: tokens/s" in done.stdout


def test_stream_stress_figures_read_drift_and_latency_of_the_model_standing_after_each_request(tmp_path):
    stress = load_script("stream_stress")
    requests = [{"seq": s, "service_s": 1.0 if s <= 2 else 1.5} for s in range(1, 5)]
    summary = {
        "requests": requests, "counts": {"applied": 3, "rolled_back": 1}, "baseline": {"model_utility": 0.5},
        # request 3 was rolled back: the model after it is the one after request 2
        "batches": [{"seqs": [1], "state": "applied", "timings": {"service": 1.0}},
                    {"seqs": [2], "state": "applied", "timings": {"service": 1.0}},
                    {"seqs": [3], "state": "rolled_back", "timings": {"service": 1.5}},
                    {"seqs": [4], "state": "applied", "timings": {"service": 1.5}}],
        "drift": [-0.01, -0.02, -0.05],
        "matrix": {"rouge_l": [[0.5, 0.4, 0.6], [None, 0.3, None], [None, None, 0.2]]},
        "resurgence_rouge_l": {"r1": 0.1, "r2": None, "r4": None},
    }
    f = stress.method_figures(summary, window=2)
    assert f["p50_ratio_last_over_first"] == pytest.approx(1.5)
    assert stress.drift_after(summary, 3) == -0.02 and stress.drift_after(summary, 4) == -0.05
    assert f["forget_rouge_l_final_mean"] == pytest.approx(0.4) and f["final_column_measured"] == 2
    assert f["resurgence_max"] == 0.1 and f["applied"] == 3
    (tmp_path / "stream_summary.json").write_text(json.dumps({"methods": {"ga": summary}}))
    assert stress.main([str(tmp_path), "--window", "2", "--json", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["ga"]["drift_after"] == {"4": -0.05}


def test_stream_sharded_compares_requests_measured_alike_and_makes_the_fifth_destructive(tmp_path):
    sharded = load_script("stream_sharded")
    requests = tmp_path / "requests.jsonl"
    sharded.write_requests(requests, "npo", 6)
    lines = [json.loads(line) for line in requests.read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"r{i}" for i in range(1, 7)]
    assert [i for i, line in enumerate(lines, 1) if "method" in line] == [sharded.BOOM]
    assert lines[sharded.BOOM - 1]["method"] == {"name": "npo", "lr": 50.0, "epochs": 3}

    def request(state, utility, probability=0.5, rouge=0.5):
        metrics = {"probability": probability, "rouge_l": rouge}
        return {"state": state, "model_utility": utility, "forget_before": metrics, "forget_after": metrics}

    plain = [request("applied", 0.48), request("rolled_back", None), request("applied", 0.47)]
    sharded_run = [request("applied", 0.48 + 1e-7), request("rolled_back", 0.0), request("applied", 0.47, rouge=0.6)]
    assert sharded.largest_difference(sharded_run, plain) == pytest.approx(0.1)
    assert sharded.largest_difference(sharded_run[:2], plain[:2]) == pytest.approx(1e-7)
    assert sharded.largest_difference([request("applied", 0.4)], [request("rolled_back", None)]) is None
