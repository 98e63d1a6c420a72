"""The memory planner: ZeRO partitioning, LoRA, the reference model, 7B verdicts, and `unlearn plan`'s exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig

from orchestrator.cli import main
from orchestrator.config import ConfigError, parse_config
from orchestrator.models.shapes import KNOWN_SHAPES, resolve_shape
from orchestrator.models.plan import GIB, plan_memory, read_deepspeed

ROOT = Path(__file__).resolve().parents[2]
ZERO3 = str(ROOT / "cluster" / "deepspeed" / "zero3.json")
ZERO3_OFFLOAD = str(ROOT / "cluster" / "deepspeed" / "zero3_offload.json")
LLAMA2 = "open-unlearning/tofu_Llama-2-7b-chat-hf_full"


def llama7b(method: str = "npo", deepspeed: str | None = None, workers: int = 1, lora: dict | None = None,
            **hparams) -> dict:
    return {"model": {"name": LLAMA2, "dtype": "bfloat16"}, "data": {"source": "tofu", "max_length": 512},
            "method": {"name": method, "hparams": hparams},
            "train": {"use_gpu": True, "batch_size": 4, "workers": workers, "deepspeed": deepspeed, "lora": lora}}


def plan(data: dict, **kwargs):
    return plan_memory(parse_config(data), device_memory_gib=kwargs.pop("device_memory_gib", 80.0), **kwargs)


def zero_json(tmp_path: Path, stage: int, **extra) -> str:
    path = tmp_path / f"zero{stage}.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": stage, **extra}, "bf16": {"enabled": "auto"}}))
    return str(path)


def test_zero3_on_two_workers_halves_the_weights_of_zero0(tmp_path):
    zero0 = plan(llama7b(deepspeed=zero_json(tmp_path, 0), workers=2))
    zero3 = plan(llama7b(deepspeed=ZERO3, workers=2))
    assert zero3.breakdown["weights"] == pytest.approx(zero0.breakdown["weights"] / 2, rel=1e-6)
    assert zero3.breakdown["reference model (frozen)"] == pytest.approx(zero0.breakdown["weights"] / 2, rel=1e-6)
    # bf16 weights of Llama-2-7B: 6.74e9 x 2 bytes
    assert zero0.breakdown["weights"] == pytest.approx(6_738_415_616 * 2 / GIB, rel=1e-9)


def test_each_zero_stage_partitions_one_more_kind_of_state(tmp_path):
    by_stage = {s: plan(llama7b(deepspeed=zero_json(tmp_path, s), workers=4)).breakdown for s in range(4)}
    optimizer = "optimizer states + fp32 master"
    assert by_stage[1][optimizer] == pytest.approx(by_stage[0][optimizer] / 4)
    assert by_stage[1]["gradients"] == by_stage[0]["gradients"]
    assert by_stage[2]["gradients"] == pytest.approx(by_stage[0]["gradients"] / 4)
    assert by_stage[2]["weights"] == by_stage[0]["weights"]
    assert by_stage[3]["weights"] == pytest.approx(by_stage[0]["weights"] / 4)
    # the ZeRO paper's 16 bytes per parameter for mixed-precision Adam: 2 + 2 + 12
    assert by_stage[0][optimizer] == pytest.approx(6 * by_stage[0]["weights"])


def test_cpu_offload_moves_optimizer_states_and_weights_to_host():
    offload = plan(llama7b(deepspeed=ZERO3_OFFLOAD, workers=8))
    assert not any(k.startswith(("optimizer", "weights", "gradients")) for k in offload.breakdown)
    assert offload.host["optimizer states + fp32 master"] == pytest.approx(6_738_415_616 * 12 / 8 / GIB)
    assert "weights" in offload.host and offload.fits


def test_lora_cuts_optimizer_memory():
    full = plan(llama7b(method="ga", deepspeed=ZERO3, workers=4))
    lora = plan(llama7b(method="ga", deepspeed=ZERO3, workers=4, lora={"rank": 8}))
    optimizer = "optimizer states + fp32 master"
    assert lora.trainable_params == 19_988_480  # peft's count for r=8 on every Linear of Llama-2-7B
    assert lora.breakdown[optimizer] < full.breakdown[optimizer] / 100
    assert lora.breakdown["gradients"] < full.breakdown["gradients"] / 100
    assert lora.total_gib < full.total_gib


def test_fila_brings_its_own_adapters_and_a_fisher_phase():
    fila = plan(llama7b(method="ihl_fila", deepspeed=ZERO3, workers=4, rank=8))
    assert fila.trainable_params == 19_988_480
    assert any(p.startswith("adapters (FILA") for p in fila.phases)
    assert fila.host["FILA Fisher accumulators (init)"] > 40


def test_reference_model_adds_its_weights():
    ga = plan(llama7b(method="ga"))
    npo = plan(llama7b(method="npo", alpha=0.0))  # NPO without the retain term: same rows as GA, plus the reference
    assert "reference model (frozen)" not in ga.breakdown
    assert npo.breakdown["reference model (frozen)"] == pytest.approx(ga.breakdown["weights"])
    assert npo.rows_per_step == ga.rows_per_step
    assert npo.phases["step"] - ga.phases["step"] == pytest.approx(ga.breakdown["weights"] * 1.05, rel=1e-6)


def test_retain_and_alternate_parts_add_rows():
    assert plan(llama7b(method="ga")).rows_per_step == 4
    assert plan(llama7b(method="npo")).rows_per_step == 8  # forget + retain
    assert plan(llama7b(method="idkpo")).rows_per_step == 12  # forget + retain + "I don't know" alternate


def test_7b_full_finetune_without_zero_does_not_fit_80_gib():
    result = plan(llama7b(method="npo"))
    assert not result.fits
    assert result.total_gib > 80
    assert "GiB" in result.reason and "80.0" in result.reason
    assert "optimizer states" in result.reason and "ZeRO-3" in result.reason


def test_7b_zero3_on_8_workers_fits_80_gib():
    result = plan(llama7b(method="npo", deepspeed=ZERO3, workers=8))
    assert result.fits and result.reason is None
    assert 20 < result.total_gib < 80


def test_ofmu_under_deepspeed_is_refused():
    result = plan({**llama7b(method="ofmu", deepspeed=ZERO3, workers=8)})
    assert not result.fits and "DeepSpeed" in result.reason


def test_shapes_match_transformers_parameter_counts():
    config = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                         intermediate_size=11008, vocab_size=32000)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert KNOWN_SHAPES["llama-2-7b"].total_params() == sum(p.numel() for p in model.parameters())
    from_config = resolve_shape(parse_config({"model": {"name": "anything"}}), config)
    assert from_config.total_params() == KNOWN_SHAPES["llama-2-7b"].total_params()


def test_shape_lookup_tiny_table_and_unknown():
    assert resolve_shape(parse_config({})).hidden_size == 128
    mistral = resolve_shape(parse_config({"model": {"name": "checkpoints/tofu_Mistral-7B-v0.1_full"}}))
    assert (mistral.num_kv_heads, mistral.intermediate_size) == (8, 14336)
    with pytest.raises(ConfigError, match="not built in"):
        resolve_shape(parse_config({"model": {"name": "someone/unknown-model"}}))


def test_read_deepspeed_resolves_auto_as_the_engine_does():
    assert read_deepspeed(ZERO3, True, 4096).mixed_precision == "bfloat16"  # bf16 "auto": on GPU workers only
    assert read_deepspeed(ZERO3, False, 4096).mixed_precision is None
    assert read_deepspeed(ZERO3, True, 4096).bucket_elements == 4096 * 4096 + int(0.9 * 4096 * 4096)
    offload = read_deepspeed(ZERO3_OFFLOAD, True, 4096)
    assert (offload.stage, offload.offload_optimizer, offload.offload_params) == (3, True, True)


def test_tiny_default_fits_on_this_machine():
    result = plan_memory(parse_config({}))
    assert result.fits and result.total_gib < 2


# --- the CLI ------------------------------------------------------------------------------------------------------
def write_yaml(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_cli_plan_exits_0_when_it_fits(tmp_path, capsys):
    path = write_yaml(tmp_path, llama7b(method="npo"))
    assert main(["plan", path, "--workers", "8", "--deepspeed", ZERO3, "--device-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "ZeRO stage 3" in out and "fits:" in out


def test_cli_plan_exits_2_with_a_one_line_reason(tmp_path, capsys):
    path = write_yaml(tmp_path, llama7b(method="npo"))
    assert main(["plan", path, "--device-memory", "80"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("unlearn plan: does not fit: needs ")


def test_cli_plan_reports_config_errors(tmp_path, capsys):
    path = write_yaml(tmp_path, {"model": {"name": "someone/unknown-model"}})
    assert main(["plan", path]) == 2
    assert "not built in" in capsys.readouterr().err


def test_run_refuses_a_plan_that_does_not_fit_before_training():
    from orchestrator.config import ConfigError, load_config
    from orchestrator.run.unlearning import check_memory

    check_memory(load_config(None), progress=lambda m: None)  # the embedded default fits
    too_big = load_config("experiments/tofu_llama2_7b_npo.yaml").with_overrides(**{"train.workers": 1})
    with pytest.raises(ConfigError, match="does not fit .*optimizer states"):
        check_memory(too_big, progress=lambda m: None)


def test_a_method_that_trains_a_few_weights_plans_their_states_alone():
    """RMU on Zephyr (Mistral-7B's shape) trains mlp.down_proj of layers 5-7: 3 x 14336 x 4096 parameters, whose
    gradients and AdamW states are what the plan counts; the weights and the frozen reference stay whole."""
    from orchestrator.config import parse_config
    from orchestrator.models.plan import plan_memory
    from orchestrator.models.shapes import KNOWN_SHAPES

    shape = KNOWN_SHAPES["zephyr-7b"]
    assert shape.matching_params([r"layers\.(5|6|7)\.mlp\.down_proj\.weight$"]) == 3 * 14336 * 4096
    assert sum(shape.named_params().values()) == shape.total_params()
    config = parse_config({"model": {"name": "HuggingFaceH4/zephyr-7b-beta", "dtype": "bfloat16"},
                           "method": {"name": "rmu", "hparams": {"layer": 7}}, "train": {"use_gpu": True}})
    plan = plan_memory(config, device_memory_gib=80.0)
    assert plan.trainable_params == 3 * 14336 * 4096
    full = plan_memory(config.with_overrides(**{"method.name": "ga", "method.hparams": {}}), device_memory_gib=80.0)
    assert full.trainable_params == shape.total_params() and full.total_gib > plan.total_gib
