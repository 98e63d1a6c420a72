"""The contract every unlearning method honours, and the reference-model cache they share.

The training loop knows only this file: it builds a method by name, hands it batches in the layout below, calls
`training_step`, and calls the optional hooks. What a method does inside is its own business.

Batch layout: a dict of *parts*, each part a dict of tensors `input_ids`, `attention_mask`, `labels` (HF
convention: prompt and padding labels are -100) and `index` (int64 row ids, unique within the part's data set, used
to cache the frozen reference model's outputs). Parts:
- `forget`: always present.
- `retain`: when `uses_retain`.
- `alternate`: when `uses_alternate`; row i holds the same question as `forget` row i with an "I don't know" answer.
- `analogous`: when `uses_analogous`; row i is the nearest retained neighbour of `forget` row i (ICU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Literal, Protocol

import torch

from methods import registry
from methods.numerics import next_token_log_softmax, sequence_logprob, shift_for_next_token, token_mask
from methods.spec import Hyperparameters, MethodProfile

Batch = dict[str, dict[str, torch.Tensor]]
BatchPart = dict[str, torch.Tensor]


class StepEngine(Protocol):
    """What a method's `training_step` may do to the trainable model: plain torch or a DeepSpeed engine."""

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> None:
        """Optimizer step, scheduler step and zero_grad."""


@dataclass(frozen=True)
class ReferenceValue:
    """One value a loss reads from the frozen reference model, per example of one batch part.

    Declared by the method (`UnlearningMethod.reference_values`) so that the training loop can compute every one of
    them before training, each worker its share, and then release the reference model; the loss reads them through
    the method's `ReferenceCache` (`UnlearningMethod.reference_value`) either way.
    """

    part: str  # the batch part ("forget", "retain", "alternate", "analogous")
    key: str  # the cache key; unique per value (alternate row i shares its index with forget row i)
    per: Literal["sequence", "token"]  # a scalar per row, or a row per labelled position
    compute: Callable[[torch.Tensor, BatchPart], torch.Tensor]  # (the reference's logits, the part) -> values
    dtype: torch.dtype = torch.float32  # as cached


def _sequence_logprob(logits: torch.Tensor, part: BatchPart) -> torch.Tensor:
    return sequence_logprob(logits, part["labels"])


def _log_softmax(logits: torch.Tensor, part: BatchPart) -> torch.Tensor:
    return next_token_log_softmax(logits, part["labels"])[0]


def reference_sequence_logprob(part: str) -> ReferenceValue:
    """log p_ref(y|x) per sequence of `part` (NPO, DPO)."""
    return ReferenceValue(part, f"{part}_logprob", "sequence", _sequence_logprob)


def reference_log_softmax(part: str) -> ReferenceValue:
    """p_ref's next-token log-distribution at `part`'s labelled positions (KL, UnDIAL, ICU), cached in float16
    (bounded log-probs tolerate it; half the memory of float32)."""
    return ReferenceValue(part, f"{part}_log_softmax", "token", _log_softmax, torch.float16)


@dataclass(frozen=True)
class ForgetSample:
    """One forget example as a method's epoch-end hook sees it (ICU's refinement)."""

    index: int
    prompt_ids: torch.Tensor  # 1-D, the question with the prompt template applied
    answer_ids: torch.Tensor  # 1-D, the true answer tokens (no padding)


class UnlearningMethod:
    """Base class: subclasses set `name` and `Hyperparameters` and implement `loss`.

    What a method needs from the loop (batch parts, reference, DeepSpeed support) is its profile in
    `methods/catalog.py`, computed from the hyperparameters without torch; the flags below read it.
    """

    name: ClassVar[str]
    Hyperparameters: ClassVar[type[Hyperparameters]] = Hyperparameters
    # True when the method reads the reference model beyond its `reference_values` (ICU's generations, RMU's
    # activations): the loop then keeps the reference for the whole run.
    keeps_reference: ClassVar[bool] = False

    def __init__(self, hparams: Hyperparameters, reference: torch.nn.Module | None = None) -> None:
        self.profile: MethodProfile = registry.profile(self.name, hparams)
        if self.needs_reference and reference is None:
            raise ValueError(f"method {self.name!r} needs a frozen reference model; pass reference=...")
        self.hparams = hparams
        self.reference: torch.nn.Module | None = None
        self.replace_reference(reference)
        self.reference_cache = ReferenceCache()

    @property
    def needs_reference(self) -> bool:
        return self.profile.needs_reference

    @property
    def uses_retain(self) -> bool:
        return self.profile.uses_retain

    @property
    def uses_alternate(self) -> bool:
        return self.profile.uses_alternate

    @property
    def uses_analogous(self) -> bool:
        return self.profile.uses_analogous

    @property
    def supports_deepspeed(self) -> bool:
        return self.profile.supports_deepspeed

    @property
    def reference_values(self) -> tuple[ReferenceValue, ...]:
        """What the loss reads from the reference model, per example; the default reads nothing."""
        return ()

    @property
    def releases_reference(self) -> bool:
        """Once every `reference_values` entry is cached, the reference model is no longer needed."""
        return bool(self.reference_values) and not self.keeps_reference

    def reference_value(self, value: ReferenceValue, part: BatchPart) -> torch.Tensor:
        """`value` for the rows of `part`: from the cache, else from a reference forward (then cached)."""
        return self.reference_cache.lookup(value, part, self.reference_logits)

    def reference_rows(self, value: ReferenceValue, part: BatchPart) -> torch.Tensor:
        """A per-token `value` at `part`'s labelled positions only, `[n, ...]` in `labelled_rows`' order and the
        cached dtype: no padded float32 `[batch, seq, vocab]` copy of a full-vocabulary value."""
        return self.reference_cache.lookup(value, part, self.reference_logits, packed=True)

    def replace_reference(self, reference: torch.nn.Module | None) -> None:
        """Use `reference` (frozen here: eval mode, no gradients) as the reference model from now on."""
        if reference is not None:
            reference.eval()
            for parameter in reference.parameters():
                parameter.requires_grad_(False)
        self.reference = reference

    def release_reference(self) -> None:
        """Drop the reference model (its values are all cached): a lookup that misses from now on is an error."""
        self.reference = None

    # --- the contract -------------------------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def training_step(self, model: torch.nn.Module, batch: Batch, engine: StepEngine) -> dict[str, float]:
        """One optimisation step; methods with their own update rule (OFMU's two loops) override this."""
        loss, logs = self.loss(model, batch)
        engine.backward(loss)
        engine.step()
        return {"loss": float(loss.detach()), **logs}

    # --- optional hooks -----------------------------------------------------------------------------------
    def make_optimizer(
        self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
    ) -> torch.optim.Optimizer | None:
        """Return the optimizer this method prescribes (SOUL: Sophia), or None for the loop's default AdamW."""
        return None

    def init_adapters(
        self, model: torch.nn.Module, forget_batches: Iterable[BatchPart], retain_batches: Iterable[BatchPart]
    ) -> torch.nn.Module:
        """Wrap the model in adapters before training (FILA); the default trains the model as it is."""
        return model

    def restrict_trainable(self, model: torch.nn.Module) -> None:
        """Freeze (`requires_grad_(False)`) the parameters this method must not update (RMU trains a few MLP weights).

        Called on the model the loop trains, adapters applied, right before the optimizer collects the parameters
        that require gradients; it may only freeze, never unfreeze. The default updates every trainable parameter.
        """

    def on_epoch_end(
        self, model: torch.nn.Module, forget: list[ForgetSample], holdout: list[ForgetSample]
    ) -> set[int] | None:
        """Forget-set indices to keep training on (ICU's refinement); None keeps all. An empty set ends training."""
        return None

    def method_state(self) -> dict[str, Any]:
        """What the method itself learns while it trains (PDU's dual variable), as plain numbers, lists and dicts:
        saved in the run's resumable checkpoint. The default has none."""
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Take back what `method_state` gave, on resume."""

    # --- helpers for subclasses ---------------------------------------------------------------------------
    def add_retain_nll(
        self, model: torch.nn.Module, batch: Batch, loss: torch.Tensor, logs: dict[str, Any]
    ) -> torch.Tensor:
        """`loss + alpha * NLL(retain)` when the method uses retain data (GradDiff-style regulariser); logs it too."""
        if not self.uses_retain:
            return loss
        from methods.numerics import forward_logits, token_denominator, token_mean_nll

        retain = batch["retain"]
        retain_nll = token_mean_nll(forward_logits(model, retain), retain["labels"], token_denominator(retain))
        logs["retain_nll"] = retain_nll
        return loss + self.hparams.alpha * retain_nll

    @torch.no_grad()
    def reference_logits(self, part: BatchPart) -> torch.Tensor:
        if self.reference is None:
            rows = part["index"].tolist()[:5]
            raise RuntimeError(f"{self.name}: the reference model was released after its values were computed, but "
                               f"rows {rows} of a batch were not among them")
        return self.reference(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hparams!r})"


class ReferenceCache:
    """Caches a frozen model's outputs per example, so the reference forward runs once per example, not per step.

    Per-sequence values are stored as scalars; per-token values as the rows of the example's labelled positions
    (so padding and batch composition do not matter). Tensors are kept on the CPU in the dtype given.
    """

    def __init__(self) -> None:
        self._sequence: dict[tuple[str, int], torch.Tensor] = {}
        self._token: dict[tuple[str, int], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        # Optional: combine this worker's "all rows cached" with the other workers' (ZeRO-3 makes the reference
        # forward a collective, so all workers must agree on whether to run it). None: decide locally.
        self.agree: Callable[[bool, torch.device], bool] | None = None

    def _hit(self, store: dict[tuple[str, int], torch.Tensor], key: str, part: BatchPart) -> bool:
        hit = all((key, int(i)) in store for i in part["index"].tolist())
        return self.agree(hit, part["input_ids"].device) if self.agree is not None else hit

    def __len__(self) -> int:
        return len(self._sequence) + len(self._token)

    def lookup(self, value: ReferenceValue, part: BatchPart,
               logits: Callable[[BatchPart], torch.Tensor], packed: bool = False) -> torch.Tensor:
        """`value` for `part`'s rows; `logits(part)` (the reference forward) runs only on a miss.
        `packed`: a per-token value at the labelled positions only (see `per_token`)."""
        compute = lambda p: value.compute(logits(p), p)  # noqa: E731
        if value.per == "sequence":
            return self.per_sequence(value.key, part, compute)
        return self.per_token(value.key, part, compute, dtype=value.dtype, packed=packed)

    def has(self, value: ReferenceValue, index: int) -> bool:
        return (value.key, index) in (self._sequence if value.per == "sequence" else self._token)

    def entries(self, value: ReferenceValue, indices: Iterable[int]) -> list[tuple[int, torch.Tensor]]:
        """The cached rows of `value` among `indices` (to hand to another worker)."""
        store = self._sequence if value.per == "sequence" else self._token
        return [(i, store[(value.key, i)]) for i in indices if (value.key, i) in store]

    def add(self, value: ReferenceValue, rows: Iterable[tuple[int, torch.Tensor]]) -> None:
        """Rows of `value` computed elsewhere (another worker's share), as `entries` gave them."""
        store = self._sequence if value.per == "sequence" else self._token
        for index, tensor in rows:
            store[(value.key, int(index))] = tensor

    def per_sequence(
        self, key: str, part: BatchPart, compute: Callable[[BatchPart], torch.Tensor]
    ) -> torch.Tensor:
        """`[batch]` values; `compute(part)` is called (under no_grad) only if some row is missing."""
        indices = [int(i) for i in part["index"].tolist()]
        if self._hit(self._sequence, key, part):
            self.hits += len(indices)
            return torch.stack([self._sequence[(key, i)] for i in indices]).to(part["input_ids"].device)
        with torch.no_grad():
            values = compute(part).detach()
        self.misses += len(indices)
        for i, value in zip(indices, values.cpu()):
            self._sequence[(key, i)] = value
        return values

    def per_token(
        self,
        key: str,
        part: BatchPart,
        compute: Callable[[BatchPart], torch.Tensor],
        dtype: torch.dtype = torch.float32,
        packed: bool = False,
    ) -> torch.Tensor:
        """`[batch, seq - 1, ...]` float32 values aligned with the shifted labels, unlabelled positions zero; or,
        `packed`, `[n, ...]` at the labelled positions only (row-major, as `tensor[mask]` orders them), as cached."""
        _, shifted_labels = shift_for_next_token(part["input_ids"].unsqueeze(-1), part["labels"])
        mask = token_mask(shifted_labels).bool()
        indices = [int(i) for i in part["index"].tolist()]
        device = part["input_ids"].device
        if self._hit(self._token, key, part):
            self.hits += len(indices)
            rows = [self._token[(key, i)] for i in indices]
            if packed:
                return torch.cat(rows).to(device=device)
            out = torch.zeros((*mask.shape, *rows[0].shape[1:]), dtype=torch.float32, device=device)
            for b, row in enumerate(rows):
                out[b, mask[b]] = row.to(device=device, dtype=torch.float32)
            return out
        with torch.no_grad():
            values = compute(part).detach()
        self.misses += len(indices)
        for b, i in enumerate(indices):
            self._token[(key, i)] = values[b, mask[b]].to(device="cpu", dtype=dtype)
        if packed:
            return values[mask]
        return values.float() * mask.reshape(*mask.shape, *([1] * (values.dim() - 2)))


def as_float_logs(**values: Any) -> dict[str, float]:
    """Detach tensors into plain floats for logging."""
    return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in values.items()}
