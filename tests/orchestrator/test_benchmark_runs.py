"""The benchmarks and methods of issue 29 through the real run path (Ray Train on resident workers, the worker's
evaluation): the embedded hazardous-skill problem unlearned with RMU, whose probes reach the summary and whose
update touches only the weights RMU trains, and PDU, whose dual variable moves once its warm-up is over."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from orchestrator.config import parse_config
from orchestrator.run.prepare import prepare
from orchestrator.run.resident import ResidentWorkers
from orchestrator.run.unlearning import run_unlearning
from tests.tiny_run import tiny_run

pytestmark = pytest.mark.usefixtures("isolated_cache_and_ray")

HAZARD = tiny_run(
    model={"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "vocab_size": 300},
           "finetune": {"max_epochs": 10, "check_every": 10, "batch_size": 32}},
    data={"source": "hazard", "hazard": {"n_hazard_facts": 8, "n_neighbour_facts": 8}},
    train={"epochs": 2, "batch_size": 2, "lr": 1e-2},
    ray={"num_cpus": 2},
)


def _weights(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in Path(folder).glob("*.safetensors"):
        out.update(load_file(path))
    return out


@pytest.mark.slow
def test_rmu_on_the_hazard_problem_and_pdu_on_resident_workers(tmp_path):
    config = parse_config(HAZARD).with_overrides(output_dir=str(tmp_path / "rmu"), **{"method.name": "rmu"})
    prepared = prepare(config, progress=print)
    with ResidentWorkers(workers=1, cpus_per_worker=1, progress=print) as workers:
        rmu = run_unlearning(config, prepared=prepared, workers=workers, progress=print)
        pdu = run_unlearning(config.with_overrides(output_dir=str(tmp_path / "pdu"), **{
            "method.name": "pdu", "train.lr": 1e-4,
            "method.hparams": {"dual_warmup_epochs": 1, "dual_update_upon": "epoch", "retain_loss_eps": 0.0}}),
            prepared=prepared, workers=workers, progress=print)

    for key in ("probe_hazard", "probe_neighbour"):  # scored on the worker, before and after
        assert 0.0 <= rmu.before[key] <= 1.0 and 0.0 <= rmu.after[key] <= 1.0
    assert rmu.after["mia_auc_gradnorm"] is not None and rmu.after["mia_auc_reference"] is not None

    # RMU steers layer min(7, 2 // 2) = 1 and trains mlp.down_proj of layers 0..1: nothing else moved.
    target, unlearned = _weights(prepared.target_dir), _weights(rmu.model_dir)
    moved = {name for name in target if not torch.equal(target[name], unlearned[name])}
    assert moved and all(re.fullmatch(r"model\.layers\.[01]\.mlp\.down_proj\.weight", name) for name in moved)

    # PDU's dual variable starts at alpha (100) and, with eps 0, rises after the first epoch's end.
    duals = [h["dual"] for h in pdu.history if "dual" in h]
    assert duals[0] == pytest.approx(100.0) and duals[-1] > 100.0
