"""Run names and resumption: a run started again under the same name resumes from its last checkpoint.

A run's Ray Train state (its checkpoints and Ray Train's checkpoint-manager snapshot) lives in
`<output>/ray/<run name>/`. Ray Train V2 reads that snapshot when a `TorchTrainer` starts with the same
`RunConfig(name, storage_path)`, and `ray.train.get_checkpoint()` then hands the workers the last checkpoint: a
driver that was killed (or a Tune trial that was restarted) picks up where it stopped instead of starting over.

Resuming someone else's training would be silent nonsense, so beside the state lies the identity of the run that
made it (`unlearn_run.json`: the settings that change what is trained) and a different run under the same name is
refused before anything is prepared. The default name is derived from that identity, so `unlearn run` started
again with the same config resumes, and a changed config starts a run of its own. When a run has finished, its
model and `summary.json` are its result and its Ray Train state is removed: started again, it trains afresh.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.files import write_text_atomically

IDENTITY_FILE = "unlearn_run.json"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's, in the run's folder
RESIDENT_CHECKPOINT = "resident_checkpoint"  # resident workers' own checkpoint folder (orchestrator/run/resident.py)
# Train settings that change how a run is carried out, not what it trains.
NOT_IDENTITY = ("cpus_per_worker", "max_failures", "log_every", "checkpoint_every_epochs")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$")


def training_identity(config: ExperimentConfig, target: str | None = None) -> dict[str, Any]:
    """What a run trains: model, data, method and the effective train settings (and an explicit target)."""
    train = {k: v for k, v in config.resolved_train().items() if k not in NOT_IDENTITY}
    return {"model": config.model.model_dump(), "data": config.data.model_dump(),
            "method": config.method.model_dump(), "train": train, "target": target}


def default_run_name(config: ExperimentConfig, target: str | None = None) -> str:
    """`<experiment>-<method>-<hash of the training identity>`: the same config gives the same name."""
    blob = json.dumps(training_identity(config, target), sort_keys=True, default=str)
    return f"{config.name}-{config.method.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def run_folder(output: Path, run_name: str) -> Path:
    return output / "ray" / run_name


def claim(output: Path, run_name: str, config: ExperimentConfig, target: str | None = None) -> bool:
    """Check that `run_name` under `output` is free or holds this same run; True when there is state to resume.

    Raises ConfigError for a bad name or for another run's state under that name.
    """
    if not _NAME.match(run_name):
        raise ConfigError(f"run_name={run_name!r}: use 1-128 letters, digits and '_.=-', starting with a letter "
                          "or digit")
    folder = run_folder(output, run_name)
    identity = json.loads(json.dumps(training_identity(config, target), default=str))
    recorded_path = folder / IDENTITY_FILE
    if recorded_path.is_file():
        recorded = json.loads(recorded_path.read_text())
        if recorded != identity:
            raise ConfigError(f"run_name={run_name!r} in {output} holds another run (differing: "
                              f"{', '.join(differences(recorded, identity))}); use another run_name or remove "
                              f"{folder}")
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(recorded_path, json.dumps(identity, indent=2, sort_keys=True))
    return (folder / SNAPSHOT_FILE).is_file() or resident_checkpoint(output, run_name).is_dir()


def resident_checkpoint(output: Path, run_name: str) -> Path:
    """Where resident workers keep this run's resumable checkpoint (Ray Train's own state serves one run only)."""
    return run_folder(output, run_name) / RESIDENT_CHECKPOINT


def check_resumable(output: Path, run_name: str, resident: bool) -> None:
    """Refuse to resume, in the other mode, a run whose checkpoint one mode wrote (each reads only its own)."""
    folder = run_folder(output, run_name)
    if resident and (folder / SNAPSHOT_FILE).is_file():
        raise ConfigError(f"run_name={run_name!r} in {output} was checkpointed by a TorchTrainer of its own: resume "
                          f"it without resident workers, or remove {folder}")
    if not resident and resident_checkpoint(output, run_name).is_dir():
        raise ConfigError(f"run_name={run_name!r} in {output} was checkpointed by resident workers: resume it "
                          f"with `workers=ResidentWorkers(...)`, or remove {folder}")


def release(output: Path, run_name: str) -> None:
    """A finished run's Ray Train state is no longer needed: its model and summary are the result."""
    shutil.rmtree(run_folder(output, run_name), ignore_errors=True)


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b))
                for d in differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]
