"""Recovery attacks in a request stream (`stream.attack_every`): how much of each forget set an attacker gets back.

Every `attack_every` applied requests, rank 0 attacks the stream's current model (`orchestrator/attacks/`: a copy
relearned, quantised, or the same weights asked another way) on the union of every forget set applied so far, and
turns each attack's per-example scores into a recovery per request:

    recovery_j = (attacked_j - after_j) / (before_j - after_j)   (`orchestrator/attacks/recovery.py`)

where, for request j and one metric (forget ROUGE-L recall `rouge_l`, answer probability `probability`), before_j is
the request's forget set measured before its own batch was applied, after_j after the batch being attacked, and
attacked_j the attack's mean over the request's examples it scored (relearning: those it did not train on). 0: the
attack brings nothing back; 1: the request's forget set is back at its level before unlearning.

The pure functions here (when to attack, per-request recovery, the worst case) are torch-free; `attack_requests`,
the one that runs the attacks, imports them where it runs (a Ray Train worker).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from orchestrator.attacks.config import AttacksConfig
from orchestrator.attacks.recovery import METRICS as ATTACK_METRICS
from orchestrator.attacks.recovery import recovery, subset_mean

if TYPE_CHECKING:
    import torch

    from orchestrator.config import ExperimentConfig
    from orchestrator.data.schema import Example, UnlearningData
    from orchestrator.data.tokenize import PromptTemplate
    from orchestrator.stream.config import StreamConfig

METRICS = tuple(ATTACK_METRICS.values())  # rouge_l, probability: what a stream measures per request too

# seq -> attack name -> metric -> {"attacked", "recovery"}
PerRequest = dict[int, dict[str, dict[str, dict[str, float | None]]]]


@dataclass(frozen=True)
class AttackOutcome:
    """Rank 0's attacks after one applied batch: per-request recovery, seconds per attack, or why none ran."""

    per_request: PerRequest
    seconds: dict[str, float]
    error: str | None = None


@dataclass(frozen=True)
class AttackPoint:
    """An attack point as the ledger keeps it: after which batch, after how many applied requests, and what came
    of it."""

    batch: int
    after_request: int
    outcome: AttackOutcome


def stream_attacks(config: "ExperimentConfig", cfg: "StreamConfig") -> AttacksConfig | None:
    """The attacks a stream runs every `cfg.attack_every` applied requests: the experiment's `eval.attacks`, else
    all of them at their defaults, resolved as `unlearn run` resolves its own (`attack_plan`); None when off."""
    if cfg.attack_every is None:
        return None
    from orchestrator.run.prepare import attack_plan, with_default_attacks

    return attack_plan(with_default_attacks(config))


def attack_due(applied_before: int, batch_size: int, every: int | None) -> bool:
    """Whether the batch about to be applied ends on an attack point.

    Counted in applied requests (not batches: rolled back, failed and quarantined requests do not count): the
    stream attacks after the batch that takes the count from `applied_before` to `applied_before + batch_size`
    across a multiple of `every` (every=2: after the 2nd, 4th, ... applied request). A coalesced batch that crosses
    several multiples attacks once; a batch rolled back attacks not at all, so the next applied one crosses the
    multiple instead."""
    if every is None or batch_size <= 0:
        return False
    return (applied_before + batch_size) // every > applied_before // every


def request_recovery(results: Sequence[Mapping[str, Any]], groups: Mapping[int, Sequence[str]],
                     before: Mapping[int, Mapping[str, float] | None],
                     after: Mapping[int, Mapping[str, float] | None]) -> PerRequest:
    """Per request seq (`groups`: seq -> its forget example ids), per attack (`results`: `AttackResult.to_dict()`),
    per metric: the attack's mean over the request's examples it scored, and its recovery against the request's
    `before` / `after` forget metrics. A request none of whose examples an attack scored has no entry for it."""
    out: PerRequest = {}
    for seq, ids in groups.items():
        b, a = before.get(seq) or {}, after.get(seq) or {}
        for result in results:
            if not any(i in result["scores"] for i in ids):
                continue
            entry = {}
            for metric in METRICS:
                attacked = subset_mean(result["scores"], ids, metric)
                entry[metric] = {"attacked": attacked, "recovery": recovery(b.get(metric), a.get(metric), attacked)}
            out.setdefault(seq, {})[result["name"]] = entry
    return out


def worst_recovery(per_request: Mapping[Any, Mapping[str, Mapping[str, Mapping[str, float | None]]]]
                   ) -> dict[str, dict[str, Any]]:
    """Per metric, the largest recovery over requests and attacks: {"recovery", "attack", "request"} (Nones when
    no recovery is defined: nothing was forgotten, or no attack scored anything)."""
    worst: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        rows = [(v[metric]["recovery"], name, request) for request, attacks in per_request.items()
                for name, v in attacks.items() if metric in v and v[metric]["recovery"] is not None]
        top = max(rows, key=lambda row: row[0]) if rows else None
        worst[metric] = {"recovery": top[0] if top else None, "attack": top[1] if top else None,
                         "request": top[2] if top else None}
    return worst


def attack_requests(model: "torch.nn.Module", tokenizer, data: "UnlearningData", template: "PromptTemplate",
                    settings, attacks: AttacksConfig, groups: Sequence[tuple[int, Sequence["Example"]]],
                    before: Mapping[int, Mapping[str, float] | None], after: Mapping[int, Mapping[str, float] | None],
                    excluded: set[str]) -> AttackOutcome:
    """Run `attacks` on `model` (left as it came: `run_attacks` attacks copies, or the same weights) over every
    example of `groups`, and each request's recovery.

    `excluded`: examples named by any request so far, kept out of the retained pairs the few-shot prefix and
    benign relearning draw on (a forgotten answer must not be the attacker's shot). An attack that cannot run
    (too few retained pairs left, say) is reported as the outcome's `error`: the batch stays applied."""
    from orchestrator.attacks.run import run_attacks

    forget = [e for _, group in groups for e in group]
    kept = replace(data, retain=tuple(e for e in data.retain if e.id not in excluded),
                   neighbour=tuple(e for e in data.neighbour if e.id not in excluded))
    try:
        results = [r.to_dict() for r in run_attacks(model, tokenizer, kept, forget, template, settings, attacks)]
    except Exception as err:  # the attacks change copies only (or restore the mode): the stream goes on
        return AttackOutcome({}, {}, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
    ids = {seq: [e.id for e in group] for seq, group in groups}
    return AttackOutcome(request_recovery(results, ids, before, after), {r["name"]: r["seconds"] for r in results})


def point_summary(point: AttackPoint, ids: Mapping[int, str | None]) -> dict[str, Any]:
    """`stream_summary.json`'s record of one attack point, its requests named by id (`ids`: seq -> request id)."""
    per_request = {ids.get(seq) or str(seq): attacks for seq, attacks in sorted(point.outcome.per_request.items())}
    return {"after_request": point.after_request, "batch": point.batch, "per_request": per_request,
            "worst": worst_recovery(per_request), "seconds": point.outcome.seconds, "error": point.outcome.error}


def describe_point(point: AttackPoint) -> str:
    """One progress line: the worst recovery per metric at an attack point, or why its attacks did not run."""
    where = f"attacks after {point.after_request} applied request(s) (batch {point.batch})"
    if point.outcome.error:
        return f"{where} did not run: {point.outcome.error}"
    shown = ", ".join(
        f"{metric} {'-' if w['recovery'] is None else format(w['recovery'], '.3f')}"
        + (f" ({w['attack']}, request seq {w['request']})" if w["attack"] else "")
        for metric, w in worst_recovery(point.outcome.per_request).items())
    return f"{where}, {sum(point.outcome.seconds.values()):.1f} s: worst recovery {shown}"
