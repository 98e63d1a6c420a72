"""Distributed execution: the DeepSpeed config, ZeRO on CPU workers, and surviving a killed worker.

The slow tests start one local Ray for the module and run real Ray Train `TorchTrainer`s of gloo workers (two, and
four for the plain engine) with real DeepSpeed on its CPU accelerator, on a tiny Llama saved to a temporary folder.
The Ray claims 4 logical CPUs on the machine's 2 cores: Ray does not pin processes, so four one-thread workers share
the cores (oversubscribed, as gloo tolerates). The runs are shared between tests through module-scoped fixtures
(each `fit` costs ~15 s of worker start-up on two cores).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from orchestrator.config import ConfigError, parse_config
from orchestrator.worker.deepspeed_engine import AUTO_KEYS, deepspeed_config, eval_config, load_deepspeed_json

ROOT = Path(__file__).resolve().parents[2]
ZERO2, ZERO3, ZERO3_OFFLOAD = (str(ROOT / "cluster" / "deepspeed" / f) for f in
                               ("zero2.json", "zero3.json", "zero3_offload.json"))
TRAIN = {"batch_size": 4, "max_grad_norm": 1.0}


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ds.json"
    path.write_text(text)
    return str(path)


# --- (a) the config: "auto" filling and one-line errors ---------------------------------------------------------
class TestDeepSpeedConfig:
    def test_shipped_configs_fill_every_auto(self):
        for path in (ZERO2, ZERO3, ZERO3_OFFLOAD):
            config = deepspeed_config(path, TRAIN, world_size=2, bf16_available=False, hidden_size=64)
            assert "auto" not in json.dumps(config), path
            assert config["train_micro_batch_size_per_gpu"] == 4
            assert config["train_batch_size"] == 8  # micro x accumulation (1) x workers
            assert config["gradient_clipping"] == 1.0
            assert config["bf16"]["enabled"] is False
            assert config["zero_allow_untested_optimizer"] is True  # SophiaG is a client optimizer

    def test_zero3_buckets_from_hidden_size(self):
        zero = deepspeed_config(ZERO3, TRAIN, 2, False, hidden_size=64)["zero_optimization"]
        assert zero["reduce_bucket_size"] == 64 * 64
        assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
        assert zero["stage3_param_persistence_threshold"] == 640

    def test_buckets_fall_back_to_deepspeed_defaults_without_hidden_size(self):
        zero = deepspeed_config(ZERO3, TRAIN, 2, False)["zero_optimization"]
        assert "reduce_bucket_size" not in zero and "stage3_param_persistence_threshold" not in zero

    def test_bf16_only_where_available_and_clipping_off(self):
        config = deepspeed_config(ZERO3, {"batch_size": 2, "max_grad_norm": None}, 1, True, 64)
        assert config["bf16"]["enabled"] is True
        assert config["gradient_clipping"] == 0.0

    def test_offload_keeps_the_client_optimizer(self):
        config = deepspeed_config(ZERO3_OFFLOAD, TRAIN, 2, False, 64)
        assert config["zero_force_ds_cpu_optimizer"] is False

    def test_explicit_values_are_kept(self, tmp_path):
        path = _write(tmp_path, '{"zero_optimization": {"stage": 2, "reduce_bucket_size": 123}, '
                                '"train_micro_batch_size_per_gpu": 3, "gradient_clipping": 0.5}')
        config = deepspeed_config(path, TRAIN, 2, False, 64)
        assert config["zero_optimization"]["reduce_bucket_size"] == 123
        assert config["train_micro_batch_size_per_gpu"] == 3
        assert config["gradient_clipping"] == 0.5

    def test_loaded_json_is_accepted_and_not_modified(self):
        loaded = load_deepspeed_json(ZERO3)  # the driver ships the contents: workers may not see the file
        config = deepspeed_config(loaded, TRAIN, 2, False, 64)
        assert config["train_micro_batch_size_per_gpu"] == 4
        assert loaded["train_micro_batch_size_per_gpu"] == "auto"

    def test_eval_config_has_no_optimizer_state_offload(self):
        config = eval_config(deepspeed_config(ZERO3_OFFLOAD, TRAIN, 2, False, 64))
        assert config["zero_optimization"]["stage"] == 3
        assert "offload_optimizer" not in config["zero_optimization"]
        assert "offload_param" in config["zero_optimization"]

    @pytest.mark.parametrize(
        "text, message",
        [
            (None, "no such file"),
            ('{"zero_optimization": {"stage": 3},\n  "bf16": {"enabled": auto}}', "malformed JSON at line 2"),
            ("[1, 2]", "expected a JSON object"),
            ('{"bf16": {"enabled": false}}', "missing key 'zero_optimization.stage'"),
            ('{"zero_optimization": {"overlap_comm": true}}', "missing key 'zero_optimization.stage'"),
            ('{"zero_optimization": {"stage": 4}}', "zero_optimization.stage = 4"),
            ('{"zero_optimization": {"stage": "3"}}', "zero_optimization.stage = '3'"),
            ('{"zero_optimization": {"stage": true}}', "zero_optimization.stage = True"),
            ('{"zero_optimization": {"stage": 2, "sub_group_size": "auto"}}',
             "cannot fill \"auto\" for 'zero_optimization.sub_group_size'"),
            ('{"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}', "remove 'optimizer'"),
        ],
    )
    def test_errors_are_one_line(self, tmp_path, text, message):
        path = str(tmp_path / "absent.json") if text is None else _write(tmp_path, text)
        with pytest.raises(ConfigError) as err:
            deepspeed_config(path, TRAIN, 2, False, 64)
        assert message in str(err.value)
        assert "\n" not in str(err.value)

    def test_every_known_auto_key_is_filled(self, tmp_path):
        config: dict = {"zero_optimization": {"stage": 3}}
        for key in AUTO_KEYS:
            node = config
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = "auto"
        filled = deepspeed_config(_write(tmp_path, json.dumps(config)), TRAIN, 2, False, 64)
        assert "auto" not in json.dumps(filled)
        load_deepspeed_json(_write(tmp_path, json.dumps(config)))


# --- the slow tests: real Ray Train workers ------------------------------------------------------------------------
VOCAB, N_FORGET, GLOBAL_BATCH = 128, 16, 8
RAY_CPUS = 4  # logical CPUs: enough for four one-CPU workers


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=True)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory) -> str:
    from orchestrator.models.loading import tiny_llama

    folder = tmp_path_factory.mktemp("target")
    tiny_llama(VOCAB, seed=0, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128).save_pretrained(
        folder, safe_serialization=True)
    return str(folder)


def _forget_rows():
    """Random 4-token prompts with answers of 6-20 tokens: the workers' shards hold unequal token counts."""
    from orchestrator.worker.batching import UnlearningRows
    from orchestrator.data.tokenize import EncodedRow

    rng = random.Random(0)
    rows = []
    for i in range(N_FORGET):
        ids = [rng.randrange(3, VOCAB) for _ in range(4 + rng.randrange(6, 21))]
        rows.append(EncodedRow(input_ids=ids, labels=[-100] * 4 + ids[4:], index=i))
    return UnlearningRows(forget=rows)


def _job(target: str, workers: int, deepspeed: str | None, **train):
    """The run's config and its workers' `TrainJob`: GA on the forget rows, 3 epochs, a checkpoint every epoch."""
    from orchestrator.worker.job import TrainJob, WorkerSettings

    train_section = {"workers": workers, "deepspeed": deepspeed, "batch_size": GLOBAL_BATCH // workers, "lr": 3e-4,
                     "epochs": 3, "log_every": 1, "checkpoint_every_epochs": 1, "cpus_per_worker": 1, **train}
    config = parse_config({"method": {"name": "ga"}, "train": train_section})
    job = TrainJob(target_dir=target, method_name="ga", method_hparams={},
                   train=WorkerSettings(**{**config.resolved_train(), "threads": 1}), rows=_forget_rows(),
                   pad_token_id=0)
    return config, job


def _fit(target: str, output: Path, workers: int, deepspeed: str | None, kill: dict | None = None,
         **train) -> dict:
    """One unlearning run (GA) through run.py's `_fit`: returns the train summary (as a dict); the model lands in
    output/model. `kill`: `tests/faults.py`'s `killing_train_loop` arguments (step, rank, marker)."""
    from dataclasses import asdict

    from orchestrator.run import state as run_state
    from orchestrator.run import unlearning

    config, job = _job(target, workers, deepspeed, **train)
    run_name = run_state.default_run_name(config)
    with pytest.MonkeyPatch.context() as patch:
        if kill is not None:
            from tests.faults import killing_train_loop

            patch.setattr(unlearning, "train_loop_per_worker", killing_train_loop(**kill))
        return asdict(unlearning._fit(config, job, output, run_name))


def _forget_nll(model_dir: Path) -> float:
    """Token-mean NLL of the whole forget set under an exported model."""
    from methods.numerics import forward_logits, token_mean_nll
    from orchestrator.data.tokenize import collate
    from orchestrator.models.loading import load_causal_lm

    model = load_causal_lm(model_dir).eval()
    with torch.no_grad():
        part = collate(_forget_rows().forget, 0)
        return float(token_mean_nll(forward_logits(model, part), part["labels"]))


def _losses(summary: dict) -> list[float]:
    return [h["loss"] for h in summary["history"]]


def _max_rel(a: dict, b: dict) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(_losses(a), _losses(b)))


@pytest.fixture(scope="module")
def zero3_two_workers(local_ray, tiny_target, tmp_path_factory):
    output = tmp_path_factory.mktemp("zero3-2w")
    return _fit(tiny_target, output, 2, ZERO3), output


@pytest.fixture(scope="module")
def torch_one_worker(local_ray, tiny_target, tmp_path_factory):
    output = tmp_path_factory.mktemp("torch-1w")
    summary = _fit(tiny_target, output, 1, None)
    assert summary["world_size"] == 1 and summary["zero_stage"] is None
    return summary, output


@pytest.mark.slow
def test_zero3_partitions_parameters_across_two_workers(zero3_two_workers):
    summary, output = zero3_two_workers
    assert summary["world_size"] == 2 and summary["zero_stage"] == 3
    total, per_worker = summary["parameters"]["total"], summary["parameters"]["per_worker"]
    assert len(per_worker) == 2
    # Each worker holds its ZeRO-3 partition (p.ds_tensor): half of every partitioned tensor, plus the small tensors
    # below stage3_param_persistence_threshold (10 x hidden = 640 elements: the RMSNorm weights) that stay whole.
    for local in per_worker:
        assert 0.45 * total <= local <= 0.55 * total, (local, total)
    assert (output / "model" / "model.safetensors").is_file()


# Why 1e-5 holds: the rows have 6-20 answer tokens, so the workers' shards of a step hold unequal token counts, and
# each worker's own token mean, averaged over the workers, is not the global batch's (that gave 1.8e-4 at the first
# logged loss, before any update). Each worker divides its sums by the global count over the number of workers
# (`with_global_denominators`, methods/numerics.py), so the engine's average of the workers' gradients and the loop's
# average of their logged losses are the global batch's: what is left is the order of float32 sums.
WORKER_TOLERANCE = 1e-5


def _assert_same_run(summary: dict, output: Path, one: dict, one_out: Path, label: str) -> None:
    print(f"\n[{label} vs 1 torch worker] max relative loss difference {_max_rel(summary, one):.2e}")
    assert len(_losses(summary)) == len(_losses(one)) == 6
    for a, b in zip(_losses(summary), _losses(one)):
        assert a == pytest.approx(b, rel=WORKER_TOLERANCE)
    assert _forget_nll(output / "model") == pytest.approx(_forget_nll(one_out / "model"), rel=WORKER_TOLERANCE)


@pytest.mark.slow
def test_two_zero3_workers_match_one_worker_on_the_same_global_batch(zero3_two_workers, torch_one_worker):
    """2 workers x batch 4 under ZeRO-3 against 1 plain-torch worker x batch 8: the same rows at every step; every
    logged loss and the final forget NLL agree to 1e-5 relative."""
    (two, two_out), (one, one_out) = zero3_two_workers, torch_one_worker
    _assert_same_run(two, two_out, one, one_out, "2 ZeRO-3 workers")
    # The same rows, split across the ranks: the same real tokens; the padding depends on each rank's batch width.
    assert two["throughput"]["tokens"] == one["throughput"]["tokens"] > 0
    assert len(two["throughput"]["peak_memory_bytes_per_rank"]) == 2


@pytest.mark.slow
def test_a_resident_group_runs_zero3_runs_one_after_another_as_fresh_trainers_do(local_ray, tiny_target, tmp_path,
                                                                                   zero3_two_workers):
    """Two ZeRO-3 runs on one resident group of 2 workers (a sweep slot's trials): each builds its engine over the
    target it loads and closes it at its end, so the second engine starts as in fresh processes; both give the
    losses of a ZeRO-3 run on a TorchTrainer of its own."""
    from dataclasses import replace

    from orchestrator.run.resident import ResidentWorkers, UnlearnTask

    (alone, _), (_, job) = zero3_two_workers, _job(tiny_target, 2, ZERO3)
    job = replace(job, train=replace(job.train, checkpoint_every_epochs=None))  # a resident run's own: rank 0's
    with ResidentWorkers(workers=2, cpus_per_worker=1, storage_root=tmp_path / "state") as workers:
        for i in range(2):
            summary = workers.run(UnlearnTask(job, str(tmp_path / f"run{i}"), {"run": f"run{i}"}))
            assert summary.zero_stage == 3 and summary.world_size == 2
            losses = [h["loss"] for h in summary.history]
            assert losses == pytest.approx(_losses(alone), rel=WORKER_TOLERANCE), i
        assert workers.starts == 1


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 4])
def test_plain_workers_match_one_worker_on_the_same_global_batch(local_ray, tiny_target, tmp_path_factory,
                                                                 torch_one_worker, workers):
    """N plain-torch workers x batch 8/N (the engine's flat all-reduce of gradients) against 1 worker x batch 8."""
    output = tmp_path_factory.mktemp(f"torch-{workers}w")
    summary = _fit(tiny_target, output, workers, None)
    assert summary["world_size"] == workers
    one, one_out = torch_one_worker
    _assert_same_run(summary, output, one, one_out, f"{workers} torch workers")


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed, kill_rank", [(ZERO3, 1), (None, 0)], ids=["zero3-rank1", "torch-rank0"])
def test_a_killed_worker_resumes_from_the_last_checkpoint(zero3_two_workers, tiny_target, tmp_path_factory,
                                                          deepspeed, kill_rank):
    """A real SIGKILL of one worker's process after global step 4 (the last step of epoch 2 of 3, before that
    epoch's checkpoint; the epoch-1 checkpoint was reported after step 2), under ZeRO-3 and under the plain engine.

    With max_failures=1 Ray Train V2 restarts the worker group, every worker loads the epoch-1 checkpoint (ZeRO-3:
    each rank's shards of model, optimizer and scheduler; plain: rank 0's full state) and the loop's state (epoch,
    step, history, kept set), and the run finishes. Why step 4 and not 3: a worker's reports wait in a one-slot queue
    until the controller polls it (every 2 s), and Ray Train registers a checkpoint only once it has it from every
    worker; a worker that dies within that window takes the checkpoint with it (the run then restarts from an earlier
    one). The step-3 metrics report, which blocks until the checkpoint report is taken, makes the epoch-1 checkpoint
    certain by step 4.

    Compared with the uninterrupted two-worker ZeRO-3 run: 1e-5 relative on every logged loss and on the final forget
    NLL. Replayed steps see the same rows and the same fp32 state; the plain engine averages the same per-worker
    gradients as ZeRO-3 (a flat all-reduce against ZeRO's reduce-scatter), so only the order of float sums differs.
    """
    plain, plain_out = zero3_two_workers
    scratch = tmp_path_factory.mktemp("kill")
    marker, output = scratch / "killed", scratch / "run"
    killed = _fit(tiny_target, output, 2, deepspeed, max_failures=1,
                  kill={"step": 4, "rank": kill_rank, "marker": str(marker)})
    assert marker.read_text().startswith(f"rank {kill_rank} killed itself at step 4")
    assert killed["resumed_from_step"] == 2 and plain["resumed_from_step"] is None
    assert killed["zero_stage"] == (3 if deepspeed else None)
    assert killed["steps"] == plain["steps"] == 6
    print(f"\n[killed {deepspeed and 'ZeRO-3' or 'torch'} run vs uninterrupted] max relative loss difference "
          f"{_max_rel(killed, plain):.2e}")
    for a, b in zip(_losses(killed), _losses(plain), strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert _forget_nll(output / "model") == pytest.approx(_forget_nll(plain_out / "model"), rel=1e-5)


@pytest.mark.slow
def test_run_unlearning_with_two_zero3_workers(local_ray, tmp_path):
    """The whole run function on a small problem: NPO (its reference values computed before training, half by each
    worker, then the reference released) training LoRA adapters (applied before `deepspeed.initialize`,
    merged into the consolidated export)."""
    from orchestrator.run.unlearning import run_unlearning

    config = parse_config({
        "name": "zero3",
        "data": {"synthetic": {"n_people": 20, "questions_per_person": 4}},
        "model": {"tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
                           "vocab_size": 512},
                  "pretrain": None, "finetune": {"epochs": 10}},
        "method": {"name": "npo"},
        "train": {"epochs": 2, "batch_size": 2, "workers": 2, "cpus_per_worker": 1, "deepspeed": ZERO3,
                  "lora": {"rank": 4, "alpha": 8}},
        "eval": {"max_per_split": 40},
        "output_dir": str(tmp_path / "out"),
    })
    result = run_unlearning(config, progress=print)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["zero_stage"] == 3
    assert result.zero_stage == 3
    assert summary["train"]["steps"] == 4  # 8 forget rows / 2 workers / batch 2, two epochs
    assert all(math.isfinite(h["loss"]) for h in summary["history"])
    # The reference values were computed once (each worker half of the rows), before the first step, and then every
    # lookup hit, though the shards are reshuffled every epoch.
    cache = summary["train"]["reference_cache"]
    assert cache["precomputed_rows"] == 8 and cache["released"] and cache["hit_rate"] == 1.0
    assert (Path(result.model_dir) / "model.safetensors").is_file()
    from safetensors import safe_open

    with safe_open(str(Path(result.model_dir) / "model.safetensors"), "pt") as exported:
        assert not [k for k in exported.keys() if "lora" in k]  # merged: a plain Llama checkpoint

    # Data-parallel evaluation: the weights gathered once on every rank, each rank ran the per-example passes on half
    # of the examples, and the metrics are those of one process evaluating the exported model alone.
    from orchestrator.evaluation import evaluate_model
    from orchestrator.models.loading import load_causal_lm, load_tokenizer
    from orchestrator.run.prepare import eval_settings, prepare

    per_rank = result.evaluation["examples_per_rank"]
    assert len(per_rank) == 2 and abs(per_rank[0] - per_rank[1]) <= 5 and sum(per_rank) > 0  # an odd split: +-1 each
    prepared = prepare(config, progress=lambda m: None)
    alone = evaluate_model(load_causal_lm(result.model_dir), load_tokenizer(prepared.tokenizer_dir), prepared.data,
                           prepared.template, eval_settings(config.eval, config.data.max_length),
                           retain_reference=prepared.retain_report).summary
    differing = {k: (v, alone[k]) for k, v in result.after.items()
                 if isinstance(v, float) and (alone[k] is None or abs(v - alone[k]) > 1e-6)}
    assert not differing


# --- (e) refused before any training -----------------------------------------------------------------------------
@pytest.mark.slow
def test_too_many_workers_is_refused_before_training(local_ray, tiny_target, tmp_path):
    with pytest.raises(ConfigError, match=f"needs {2 * RAY_CPUS} CPUs, but the Ray cluster has {RAY_CPUS}"):
        _fit(tiny_target, tmp_path, 2 * RAY_CPUS, ZERO3)
    assert not (tmp_path / "ray").exists()


def test_bad_deepspeed_file_is_refused_before_preparation(tmp_path, monkeypatch):
    from orchestrator.run import unlearning as run

    monkeypatch.setattr(run, "prepare", lambda *a, **k: pytest.fail("prepared despite a bad DeepSpeed file"))
    bad = _write(tmp_path, '{"zero_optimization": {"stage": 5}}')
    config = parse_config({"train": {"deepspeed": bad}, "output_dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match="zero_optimization.stage = 5"):
        run.run_unlearning(config, progress=print)


@pytest.mark.parametrize("method", [{"name": "ofmu"}, {"name": "soul", "hparams": {"hessian_estimator": "gnb"}}])
def test_method_without_deepspeed_support_is_refused_before_preparation(tmp_path, monkeypatch, method):
    from orchestrator.run import unlearning as run

    monkeypatch.setattr(run, "prepare", lambda *a, **k: pytest.fail("prepared despite an impossible method"))
    config = parse_config({"method": method, "train": {"deepspeed": ZERO3}, "output_dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match=f"method {method['name']!r} .* cannot run under DeepSpeed"):
        run.run_unlearning(config, progress=print)


# --- Sophia (SOUL's optimizer) as a DeepSpeed client optimizer --------------------------------------------------
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.distributed:FutureWarning")  # DeepSpeed's deprecated collective names
def test_sophia_under_zero_matches_plain_torch(tmp_path, monkeypatch):
    """One process (world size 1, gloo): SophiaG wrapped by ZeRO-2 and ZeRO-3 (flat fp32 partitions, DeepSpeed's
    clipping and scheduler step) takes the same steps as SophiaG under the plain engine; equal to 1e-5 relative.
    (One process group for both stages: DeepSpeed keeps the first group it sees in a global.)"""
    import torch.distributed as dist

    monkeypatch.setenv("LOCAL_RANK", "0")  # DeepSpeed's sanity check; Ray Train sets it in its workers
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        plain_losses, plain_state = _sophia_steps(None)
        assert plain_losses[-1] != plain_losses[0]
        for path in (ZERO2, ZERO3):
            losses, state = _sophia_steps(deepspeed_config(path, TRAIN, 1, False, hidden_size=32))
            assert losses == pytest.approx(plain_losses, rel=1e-5), path
            for key, value in plain_state.items():
                torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


def _sophia_steps(config: dict | None) -> tuple[list[float], dict[str, torch.Tensor]]:
    from methods.numerics import forward_logits, token_mean_nll
    from methods.sophia import SophiaG
    from orchestrator.worker.deepspeed_engine import DeepSpeedStepEngine
    from orchestrator.worker.engine import TorchStepEngine, linear_schedule
    from orchestrator.models.loading import tiny_llama
    from tests.conftest import make_part

    model = tiny_llama(64, seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    optimizer = SophiaG(model.parameters(), lr=1e-3, weight_decay=0.1)
    if config is None:
        engine = TorchStepEngine(model, optimizer, linear_schedule(optimizer, 8, 0.25), max_grad_norm=1.0)
    else:
        engine = DeepSpeedStepEngine(model, optimizer, lambda o: linear_schedule(o, 8, 0.25), config)
    losses = []
    for step in range(4):  # gradient ascent on random tokens: large gradients, so clipping is active
        part = make_part(seed=step)
        loss = -token_mean_nll(forward_logits(engine.model, part), part["labels"])
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    return losses, {k: v.clone() for k, v in engine.full_state_dict().items()}
