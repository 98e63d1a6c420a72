"""Peak memory of one NPO and one UnDIAL training step at a 32k vocabulary: log p(label) over every position in
float32 (before) against at the labelled positions only, in chunks (after: `methods/numerics.py` token_logprobs).

A Llama of `--hidden` x `--layers` with a `--vocab` vocabulary, `--batch` rows of `--length` tokens (60% prompt, then
the answer, the last rows padded), the method's reference values cached before the step as the training loop does.
Each variant runs in a fresh process; the figure is the process's peak resident set (`ru_maxrss`) by the end of
the step: the same model, rows, imports and cached reference values in both, so the difference is the step's. The parent then runs both variants on the same model and rows and prints the largest
difference of the losses and of the gradients.

    python benchmarks/step_memory.py [--vocab 32000] [--hidden 256] [--layers 2] [--batch 8] [--length 128]

UnDIAL's loss needs the whole next-token distribution at each answer position (`next_token_log_softmax`), which this
change does not touch: its figure shows what the full-vocabulary part of a loss still costs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import methods
import methods.numerics as numerics
from methods.numerics import IGNORE_INDEX

METHODS = ("npo", "undial")


def full_vocabulary_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Before: a float32 log_softmax over [batch, seq - 1, vocab], prompt and padding included, then the gather."""
    shifted, targets = logits[:, :-1, :], labels[:, 1:]
    mask = (targets != IGNORE_INDEX).float()
    picked = torch.gather(F.log_softmax(shifted.float(), dim=-1), -1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def problem(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, dict[str, torch.Tensor]]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=args.hidden * 4,
                         max_position_embeddings=args.length)
    model = LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, args.vocab, (args.batch, args.length), generator=g)
    attention = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, : int(0.6 * args.length)] = IGNORE_INDEX
    for row in range(args.batch // 2, args.batch):  # padding on half of the rows
        cut = args.length - 8 * (row - args.batch // 2 + 1)
        ids[row, cut:], attention[row, cut:], labels[row, cut:] = 0, 0, IGNORE_INDEX
    part = {"input_ids": ids, "attention_mask": attention, "labels": labels, "index": torch.arange(args.batch)}
    return model, {"forget": part, "retain": {**part, "index": part["index"] + 1_000_000}}


def ready(name: str, variant: str, args: argparse.Namespace):
    """The model, the rows and the method, its reference values cached before the step as the loop does."""
    if variant == "before":
        numerics.token_logprobs = full_vocabulary_logprobs
    model, batch = problem(args)
    method = methods.build(name, reference=model)
    with torch.no_grad():
        for value in method.reference_values:
            method.reference_value(value, batch[value.part])
    method.release_reference()
    model.requires_grad_(True)
    model.train()
    return model, batch, method


def step(name: str, variant: str, args: argparse.Namespace) -> tuple[float, dict[str, torch.Tensor]]:
    """One loss and backward: the loss and the gradients."""
    model, batch, method = ready(name, variant, args)
    loss, _ = method.loss(model, batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def child(name: str, variant: str, args: argparse.Namespace) -> None:
    model, batch, method = ready(name, variant, args)
    started = time.perf_counter()
    loss, _ = method.loss(model, batch)
    loss.backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_bytes": peak, "seconds": seconds, "loss": float(loss.detach())}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        child(*args.child, args)
        return 0
    shape = [f"--{k}={getattr(args, k)}" for k in ("vocab", "hidden", "layers", "batch", "length", "threads")]
    print(f"one training step, Llama {args.hidden}x{args.layers}, vocab {args.vocab}, {args.batch} rows of "
          f"{args.length} tokens (60% prompt), torch threads {args.threads}; peak RSS of the process\n")
    print(f"{'method':7} {'before MiB':>10} {'after MiB':>10} {'ratio':>6} {'before s':>8} {'after s':>8} "
          f"{'max |dloss|':>11} {'max |dgrad|':>11}")
    for name in METHODS:
        runs = {}
        for variant in ("before", "after"):
            out = subprocess.run([sys.executable, __file__, "--child", name, variant, *shape], check=True,
                                 capture_output=True, text=True).stdout
            runs[variant] = json.loads(out.strip().splitlines()[-1])
        original = numerics.token_logprobs
        loss_after, grads_after = step(name, "after", args)
        loss_before, grads_before = step(name, "before", args)
        numerics.token_logprobs = original
        dgrad = max(float((grads_after[k] - grads_before[k]).abs().max()) for k in grads_after)
        b, a = runs["before"], runs["after"]
        print(f"{name:7} {b['peak_bytes'] / 2**20:10.1f} {a['peak_bytes'] / 2**20:10.1f} "
              f"{a['peak_bytes'] / b['peak_bytes']:6.2f} {b['seconds']:8.3f} {a['seconds']:8.3f} "
              f"{abs(loss_after - loss_before):11.2e} {dgrad:11.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
