"""Peak memory of one NPO and one UnDIAL training step at a 32k vocabulary, before and after the losses were moved to
the labelled positions only, in chunks:
- NPO: log p(label) over every position in float32 (before) against `methods/numerics.py` token_logprobs (after);
- UnDIAL: float32 [batch, seq - 1, vocab] log_softmax, target and product over every position, the cached teacher
  expanded to that shape in float32 (before), against `soft_cross_entropy` on the labelled rows with the teacher's
  float16 rows as cached (after);
- UnDIAL with a sparse teacher (`teacher_top_k`): the cached reference values' size, the mass left out, and the
  loss's and gradients' error against the whole vocabulary.

A Llama of `--hidden` x `--layers` with a `--vocab` vocabulary, `--batch` rows of `--length` tokens (60% prompt, then
the answer, the last rows padded), the method's reference values cached before the step as the training loop does.
Each variant runs in a fresh process; the figure is the process's peak resident set (`ru_maxrss`) by the end of
the step: the same model, rows, imports and cached reference values in both, so the difference is the step's. The parent then runs both variants on the same model and rows and prints the largest
difference of the losses and of the gradients.

    python benchmarks/step_memory.py [--vocab 32000] [--hidden 256] [--layers 2] [--batch 8] [--length 128]

"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import torch
import torch.nn.functional as F

import methods
import methods.undial
import methods.numerics as numerics
from methods.numerics import IGNORE_INDEX

METHODS = ("npo", "undial")


def full_vocabulary_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Before: a float32 log_softmax over [batch, seq - 1, vocab], prompt and padding included, then the gather."""
    shifted, targets = logits[:, :-1, :], labels[:, 1:]
    mask = (targets != IGNORE_INDEX).float()
    picked = torch.gather(F.log_softmax(numerics.at_least_float32(shifted), dim=-1), -1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def full_vocabulary_undial_loss(self, model, batch):
    """Before: UnDIAL's loss as it was, every tensor [batch, seq - 1, vocab] in float32."""
    forget = batch["forget"]
    logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    log_p = F.log_softmax(numerics.at_least_float32(logits[:, :-1]), dim=-1)
    labels = forget["labels"][:, 1:]
    mask = (labels != IGNORE_INDEX).float()
    true = labels.clamp(min=0).unsqueeze(-1)
    teacher = self.reference_value(self.TEACHER, forget).to(log_p.dtype)
    penalty = torch.full_like(true, -self.hparams.gamma, dtype=log_p.dtype)
    target = F.softmax(teacher.scatter_add(-1, true, penalty), dim=-1)
    loss = (-(target * log_p).sum(-1) * mask).sum() / mask.sum()
    return loss, {}


def problem(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, dict[str, torch.Tensor]]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=args.hidden * 4,
                         max_position_embeddings=args.length)
    model = LlamaForCausalLM(config)
    if args.weights:
        model.load_state_dict(torch.load(args.weights, weights_only=True))
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


def memorise(args: argparse.Namespace, path: str) -> float:
    """Fine-tune the model on its rows (AdamW, `--memorise-steps`) and save it to `path`, so that the teacher is
    peaked on its answers as a target model is on its forget set (a random model's distribution is near uniform,
    which no top-k represents). Returns the mean entropy (nats) of its next-token distribution at the answers."""
    model, batch = problem(args)
    part = batch["forget"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(args.memorise_steps):
        optimizer.zero_grad()
        model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], labels=part["labels"]).loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), path)
    with torch.no_grad():
        rows, _ = numerics.labelled_rows(model(input_ids=part["input_ids"]).logits, part["labels"])
        return float(numerics.soft_entropy(rows).mean())


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class PeakSampler:
    """The process's largest resident set while it runs, sampled every 0.2 ms on a thread."""

    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.0002)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def ready(name: str, variant: str, args: argparse.Namespace, dtype: torch.dtype = torch.float32):
    """The model, the rows and the method, its reference values cached before the step as the loop does."""
    if variant == "before":
        numerics.token_logprobs = full_vocabulary_logprobs
        methods.undial.UnDIAL.loss = full_vocabulary_undial_loss
    model, batch = problem(args)
    model.to(dtype)
    top_k = {"teacher_top_k": int(variant[len("top"):])} if variant.startswith("top") else {}
    method = methods.build(name, reference=model, **top_k)
    with torch.no_grad():
        for value in method.reference_values:
            method.reference_value(value, batch[value.part])
    method.release_reference()
    model.requires_grad_(True)
    model.train()
    return model, batch, method


def step(name: str, variant: str, args: argparse.Namespace,
         dtype: torch.dtype = torch.float32) -> tuple[float, dict[str, torch.Tensor], dict, int]:
    """One loss and backward in `dtype`: the loss, the gradients, the logs and the bytes of the cached reference
    values."""
    model, batch, method = ready(name, variant, args, dtype)
    loss, logs = method.loss(model, batch)
    loss.backward()
    cached = sum(t.numel() * t.element_size() for t in method.reference_cache._token.values())
    cached += sum(t.numel() * t.element_size() for t in method.reference_cache._sequence.values())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, logs, cached


def child_peak(name: str, variant: str, shape: list[str]) -> dict:
    """One step in a fresh process whose large allocations are mapped and unmapped one by one (glibc's
    M_MMAP_THRESHOLD), so that its resident set follows the live tensors: the step's peak above what it started on."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--child", name, variant, *shape], check=True,
                         capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def child(name: str, variant: str, args: argparse.Namespace) -> None:
    model, batch, method = ready(name, variant, args)
    gc.collect()
    baseline = rss_bytes()
    started = time.perf_counter()
    with PeakSampler() as sampler:
        loss, _ = method.loss(model, batch)
        loss.backward()
    seconds = time.perf_counter() - started
    print(json.dumps({"peak_bytes": sampler.peak - baseline, "seconds": seconds, "loss": float(loss.detach())}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top-k", type=int, nargs="*", default=[16, 64, 256, 1024],
                        help="UnDIAL teacher_top_k values to compare with the whole vocabulary")
    parser.add_argument("--memorise-steps", type=int, default=40,
                        help="AdamW steps that fit the model to its rows first (a peaked teacher); 0: a random model")
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        child(*args.child, args)
        return 0
    workdir = tempfile.mkdtemp(prefix="step-memory-")
    entropy = None
    if args.memorise_steps:
        entropy = memorise(args, os.path.join(workdir, "memorised.pt"))
        args.weights = os.path.join(workdir, "memorised.pt")
    shape = [f"--{k}={getattr(args, k)}" for k in ("vocab", "hidden", "layers", "batch", "length", "threads")]
    shape += [f"--weights={args.weights}"] if args.weights else []
    print(f"one training step (loss + backward), Llama {args.hidden}x{args.layers}, vocab {args.vocab}, "
          f"{args.batch} rows of {args.length} tokens (60% prompt), torch threads {args.threads}; "
          f"{'model fitted to its rows by ' + str(args.memorise_steps) + ' AdamW steps' if entropy is not None else 'random model'}"
          f"{f', teacher entropy at the answers {entropy:.2f} nats' if entropy is not None else ''}; "
          "peak resident set above the step's start (MiB)\n")
    print(f"{'method':7} {'before MiB':>10} {'after MiB':>10} {'ratio':>6} {'before s':>8} {'after s':>8} "
          f"{'rel |dloss|':>11} {'rel |dgrad|':>11} {'f64 |dloss|':>11} {'f64 |dgrad|':>11}")
    original = numerics.token_logprobs, methods.undial.UnDIAL.loss
    for name in METHODS:
        runs = {variant: child_peak(name, variant, shape) for variant in ("before", "after")}
        errors = []
        for dtype in (torch.float32, torch.float64):
            loss_after, grads_after, _, _ = step(name, "after", args, dtype)
            loss_before, grads_before, _, _ = step(name, "before", args, dtype)
            numerics.token_logprobs, methods.undial.UnDIAL.loss = original
            dgrad = max(float((grads_after[k] - grads_before[k]).abs().max()) for k in grads_after)
            errors += [abs(loss_after - loss_before) / abs(loss_before),
                       dgrad / max(float(g.abs().max()) for g in grads_before.values())]
        b, a = runs["before"], runs["after"]
        print(f"{name:7} {b['peak_bytes'] / 2**20:10.1f} {a['peak_bytes'] / 2**20:10.1f} "
              f"{a['peak_bytes'] / b['peak_bytes']:6.2f} {b['seconds']:8.3f} {a['seconds']:8.3f} "
              + " ".join(f"{e:11.2e}" for e in errors))

    print("\nUnDIAL's teacher as cached: the whole vocabulary (float16) against its top k + the true token; the error "
          "relative to the whole vocabulary's loss and largest gradient entry")
    print(f"{'teacher':9} {'cache MiB':>9} {'peak MiB':>9} {'tail mass':>12} {'rel |dloss|':>11} {'rel |dgrad|':>11}")
    loss_full, grads_full, _, cached_full = step("undial", "after", args)
    scale = max(float(g.abs().max()) for g in grads_full.values())
    print(f"{'full':9} {cached_full / 2**20:9.2f} {child_peak('undial', 'after', shape)['peak_bytes'] / 2**20:9.1f} "
          f"{0.0:12.2e} {0.0:11.2e} {0.0:11.2e}")
    for k in args.top_k:
        loss_k, grads_k, logs, cached_k = step("undial", f"top{k}", args)
        dgrad = max(float((grads_k[n] - grads_full[n]).abs().max()) for n in grads_full) / scale
        peak = child_peak("undial", f"top{k}", shape)["peak_bytes"]
        print(f"{'top ' + str(k):9} {cached_k / 2**20:9.2f} {peak / 2**20:9.1f} {logs['teacher_tail_mass']:12.2e} "
              f"{abs(loss_k - loss_full) / abs(loss_full):11.2e} {dgrad:11.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
