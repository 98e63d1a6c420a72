"""Representation Misdirection for Unlearning (RMU): scramble a layer's activations on forget data, hold them on retain.

Li et al., "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning", arXiv 2403.03218, Sec. 5.2:
with h_l(x) the output of decoder layer l of the updated model, h_l^frozen that of the frozen original, u a fixed
random unit vector and c the steering coefficient,
    L = gamma * E_forget[ 1/d ||h_l(x_t) - c u||^2 ] + alpha * E_retain[ 1/d ||h_l(x_t) - h_l^frozen(x_t)||^2 ],
so the forget activations are pushed to a large random direction (which later layers read as noise) while the retain
activations stay where they were. Only a few MLP weights before layer l are trained.

Reference code: centerforaisafety/wmdp `rmu/unlearn.py` (`run_rmu`) with `rmu/utils.py` (`forward_with_cache`,
`get_params`), as re-implemented by locuslab/open-unlearning `src/trainer/unlearn/rmu.py` (configs/trainer/RMU.yaml:
steering 2, alpha 1, gamma 1). Conventions followed:
- h_l is the first element of `model.model.layers[l]`'s output, caught by a forward hook (both references'
  `forward_with_cache`); the retain target comes from the same layer of the frozen reference, under no_grad.
- u = torch.rand(hidden_size) (uniform entries in [0, 1)), divided by its norm, times c: both references. Ours is
  drawn once per method instance from a generator of its own seeded with `control_seed` (WMDP seeds the global RNG
  with 42 and draws on the device in the model's dtype); it stays float32, and the activations are compared with it
  in float32 (open-unlearning casts it to the model's dtype).
- Masking and reduction: open-unlearning `compute_activation_loss`: squared error averaged over the hidden dimension,
  summed over the positions whose label is not -100, divided by that row's count of such positions, then averaged
  over rows. Labels are *not* shifted here: the activation at position t belongs to input token t, and
  labels[t] != -100 marks t as an answer token (HF convention). WMDP's plain `mse_loss` also averages over prompt and
  padding positions; its corpora have neither.
- loss = gamma * forget + alpha * retain (open-unlearning; WMDP has no gamma).
- Trainable parameters: WMDP's `layer_ids` l-2..l with `param_ids` 6, which in a Llama/Mistral/Zephyr decoder layer
  is `mlp.down_proj.weight` (see `RMUHyperparameters.resolved_trainable_patterns`).
Deviations, on purpose:
- A row without labelled positions contributes 0 (open-unlearning divides 0 by 0 and gets NaN).
- Parameter patterns are matched with re.search (open-unlearning: re.fullmatch), so that a pattern written for the
  plain model also finds its weights under a peft wrapper's longer names; '.*' means the same in both.
- The reference activations are not cached per example (hidden_size values per token would cost gigabytes on a
  benchmark's retain set); like both references, the frozen model runs on every retain batch.
- The forward stops at nothing: the full model runs (a hook that raised to cut the forward short would leave ZeRO-3's
  gathered parameters behind), but without the KV cache and with the output head on one position only where the
  model's forward accepts it, which saves the vocabulary-sized logits the loss does not read.
"""

from __future__ import annotations

import inspect
import re

import torch

from methods.base import Batch, BatchPart, UnlearningMethod, as_float_logs
from methods.hyperparameters import RMUHyperparameters
from methods.numerics import IGNORE_INDEX, sequence_denominator, sequence_mean


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The HF causal LM inside `model`: through a DeepSpeed engine or DDP (`.module`) and peft (`get_base_model()`)."""
    inner = model
    for _ in range(8):  # wrappers first: a DeepSpeed engine forwards `.model` to its module, but not its signature
        if hasattr(inner, "get_base_model"):  # peft: LoRA layers are injected in place, so its base runs them
            inner = inner.get_base_model()
        elif isinstance(getattr(inner, "module", None), torch.nn.Module):
            inner = inner.module
        else:
            break
    if isinstance(getattr(getattr(inner, "model", None), "layers", None), torch.nn.ModuleList):
        return inner
    raise ValueError(f"RMU needs a decoder-only HF model with model.model.layers (Llama/Mistral/Qwen style); "
                     f"{type(model).__name__} has none")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """`model.model.layers` of the causal LM inside `model` (see `causal_lm`)."""
    return causal_lm(model).model.layers


def _lean_forward_kwargs(lm: torch.nn.Module) -> dict[str, object]:
    """No KV cache, and logits for one position only: what RMU's forward can skip, where the model's forward allows."""
    accepted = inspect.signature(lm.forward).parameters
    kwargs: dict[str, object] = {}
    if "use_cache" in accepted:
        kwargs["use_cache"] = False
    if "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = 1
    return kwargs


def layer_output(model: torch.nn.Module, part: BatchPart, layer: int) -> torch.Tensor:
    """`[batch, seq, hidden]` output of decoder layer `layer` on `part` (the first element when the layer returns a
    tuple), with the autograd graph when gradients are enabled (WMDP `forward_with_cache`)."""
    lm = causal_lm(model)
    caught: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: object, output: object) -> None:
        caught.append(output[0] if isinstance(output, tuple) else output)

    handle = lm.model.layers[layer].register_forward_hook(hook)
    try:
        model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], **_lean_forward_kwargs(lm))
    finally:
        handle.remove()
    return caught[0]


def activation_mse(activations: torch.Tensor, target: torch.Tensor, part: BatchPart) -> torch.Tensor:
    """Mean over rows of the mean over labelled positions of the hidden-averaged squared error (open-unlearning
    `compute_activation_loss`), in float32. `target` broadcasts against `[batch, seq, hidden]`."""
    squared = (activations.float() - target.float()).pow(2).mean(dim=-1)  # [batch, seq]
    mask = (part["labels"] != IGNORE_INDEX).to(squared.dtype)  # unshifted: position t is input token t
    per_row = (squared * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
    return sequence_mean(per_row, sequence_denominator(part))


class RMU(UnlearningMethod):
    """gamma * MSE(h_l(forget), c u) + alpha * MSE(h_l(retain), h_l^frozen(retain)), on a few MLP weights."""

    name = "rmu"
    Hyperparameters = RMUHyperparameters

    keeps_reference = True  # the retain activations of the frozen model, every step (not cached)

    def __init__(self, hparams: RMUHyperparameters, reference: torch.nn.Module | None = None) -> None:
        super().__init__(hparams, reference)
        self._control: torch.Tensor | None = None  # c * u, float32, built on first use (it needs hidden_size)

    def layer(self, model: torch.nn.Module) -> int:
        """The steered layer's index on `model`; a one-line ValueError if the model has no such layer."""
        return self.hparams.resolved_layer(len(decoder_layers(model)))

    def control_vector(self, hidden_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """c * u, `[hidden_size]` float32: drawn once per instance (uniform entries, normalised: WMDP), then fixed."""
        if self._control is None:
            generator = torch.Generator().manual_seed(self.hparams.control_seed)
            u = torch.rand(hidden_size, generator=generator, dtype=torch.float32)
            self._control = u / u.norm() * self.hparams.steering_coeff
        if self._control.numel() != hidden_size:
            raise ValueError(f"RMU's control vector has {self._control.numel()} entries, the model's layer "
                             f"{hidden_size}: one method instance serves one model")
        if self._control.device != torch.device(device):
            self._control = self._control.to(device)
        return self._control

    def restrict_trainable(self, model: torch.nn.Module) -> None:
        patterns = self.hparams.resolved_trainable_patterns(len(decoder_layers(model)))
        compiled = [re.compile(pattern) for pattern in patterns]
        trainable = 0
        for name, parameter in model.named_parameters():
            if any(c.search(name) for c in compiled):
                trainable += int(parameter.requires_grad)  # only freezes: what the adapters froze stays frozen
            else:
                parameter.requires_grad_(False)
        if not trainable:
            raise ValueError(f"RMU's trainable_params_regex {patterns} matches no trainable parameter of the model")

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        layer = self.layer(model)
        forget = batch["forget"]
        activations = layer_output(model, forget, layer)
        control = self.control_vector(activations.shape[-1], activations.device)
        forget_rmu = activation_mse(activations, control, forget)
        loss = self.hparams.gamma * forget_rmu
        logs = {"forget_rmu": forget_rmu}
        if self.uses_retain:
            assert self.reference is not None
            retain = batch["retain"]
            activations = layer_output(model, retain, layer)
            with torch.no_grad():
                frozen = layer_output(self.reference, retain, self.layer(self.reference))
            retain_rmu = activation_mse(activations, frozen.to(activations.device), retain)
            loss = loss + self.hparams.alpha * retain_rmu
            logs["retain_rmu"] = retain_rmu
        return loss, as_float_logs(**logs)
