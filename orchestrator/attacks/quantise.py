"""Weight-only quantisation as an attack: the unlearned model's linear weights rounded to 8 or 4 bits.

Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization" (ICLR 2025): methods whose utility
constraint keeps the weights close to the target's hide the forgotten knowledge in changes smaller than one
quantisation step, and rounding them away brings it back. Their round-to-nearest baseline is reproduced here:
asymmetric (a scale and a zero point per group), group-wise along each row's input weights, every linear layer but
the output head (kept in full precision, as GPTQ and AWQ keep it). The weights are rounded and written back in the
model's dtype ("fake" quantisation): the model then computes exactly what a kernel dequantising on the fly would.
"""

from __future__ import annotations

import torch


def quantise_rtn(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """`weight` [out, in] rounded to `bits` with one scale and zero point per `group_size` input weights of a row.

    Each group maps [min, max] onto the integers 0 .. 2^bits - 1; a constant group comes back unchanged."""
    if weight.dim() != 2:
        raise ValueError(f"quantise_rtn expects a 2-D weight, got shape {tuple(weight.shape)}")
    rows, columns = weight.shape
    size = min(group_size, columns)
    padded = -columns % size
    w = weight.detach().float()
    if padded:  # the last group of each row is short: pad it with a copy of its last weight (changes no min/max)
        w = torch.cat([w, w[:, -1:].expand(rows, padded)], dim=1)
    groups = w.reshape(rows, -1, size)
    low = groups.amin(dim=-1, keepdim=True)
    high = groups.amax(dim=-1, keepdim=True)
    levels = 2**bits - 1
    scale = (high - low) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-low / safe)
    q = torch.clamp(torch.round(groups / safe) + zero, 0, levels)
    rounded = torch.where(scale > 0, (q - zero) * safe, groups)
    return rounded.reshape(rows, -1)[:, :columns].to(weight.dtype)


def quantise_nf4(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """`weight` through bitsandbytes' NF4 (4-bit NormalFloat, absmax per block of `group_size`) and back."""
    import bitsandbytes.functional as bnb_functional

    packed, state = bnb_functional.quantize_4bit(weight.detach().contiguous(), blocksize=group_size,
                                                 quant_type="nf4")
    return bnb_functional.dequantize_4bit(packed, state).to(weight.dtype).reshape(weight.shape)


def quantised_layers(model: torch.nn.Module) -> list[str]:
    """Names of the linear layers the attack rounds: every `nn.Linear` but the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head]


@torch.no_grad()
def quantise_model(model: torch.nn.Module, bits: int, group_size: int, method: str = "rtn") -> int:
    """Round `model`'s linear weights in place (see the module docstring); returns how many layers it rounded."""
    names = quantised_layers(model)
    modules = dict(model.named_modules())
    for name in names:
        weight = modules[name].weight
        if method == "nf4":
            weight.copy_(quantise_nf4(weight, group_size))
        else:
            weight.copy_(quantise_rtn(weight, bits, group_size))
    return len(names)
