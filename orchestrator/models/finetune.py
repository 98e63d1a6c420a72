"""Fine-tuning of the embedded tiny models: the target (all data) and the retain model (retain data only).

This is preparation, not unlearning: it pretrains the tiny model on general text, then makes a model that knows the
task's data so that there is something to forget, and the retain-only model that forget quality is measured against
(orchestrator/models/tiny.py). Plain PyTorch in one process: the tiny model trains in a minute or two on two cores,
and the result is cached by content hash.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from methods.numerics import IGNORE_INDEX, shift_for_next_token
from orchestrator.data.tokenize import EncodedRow, collate
from orchestrator.observe.progress import Steps


def finetune(
    model: torch.nn.Module,
    rows: Sequence[EncodedRow],
    pad_token_id: int,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    label_smoothing: float = 0.0,
    progress: Callable[[str], None] | None = None,
    label: str = "fine-tune",
    should_stop: Callable[[int], bool] | None = None,
) -> list[float]:
    """Train `model` in place with AdamW (linear warm-up 5%, linear decay) on the labelled tokens.

    Returns the epoch losses. `should_stop(epochs_done)`, called after each epoch, ends training early (the text
    corpora's memorisation rule); the schedule still spans `epochs`, which is then a cap. `progress` gets a line
    every eighth of the epochs (or, at a terminal, a bar over the steps takes their place: `orchestrator/observe/progress.py`).
    """
    if not rows:
        raise ValueError(f"{label}: nothing to train on")
    rng = random.Random(seed)
    order = list(range(len(rows)))
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    total = steps_per_epoch * epochs
    warmup = max(1, total // 20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    steps = Steps(label, total, emit=progress, mode=None if progress else "off")
    device = next(model.parameters()).device
    for epoch in range(epochs):
        rng.shuffle(order)
        epoch_loss = 0.0
        for start in range(0, len(order), batch_size):
            batch = {k: v.to(device) for k, v in
                     collate([rows[i] for i in order[start : start + batch_size]], pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shifted_logits, shifted_labels = shift_for_next_token(logits, batch["labels"])
            loss = F.cross_entropy(shifted_logits.reshape(-1, shifted_logits.size(-1)).float(),
                                   shifted_labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                   label_smoothing=label_smoothing)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            epoch_loss += float(loss.detach())
            steps.advance()
        losses.append(epoch_loss / steps_per_epoch)
        steps.describe(f"epoch {epoch + 1}/{epochs} loss {losses[-1]:.3f}")
        if (epoch + 1) % max(1, epochs // 8) == 0 or epoch + 1 == epochs:
            steps.line(f"{label}: epoch {epoch + 1}/{epochs} loss {losses[-1]:.3f} "
                       f"({time.perf_counter() - started:.0f}s)")
        with steps.paused():  # the memorisation rule prints its own line
            stop = should_stop is not None and should_stop(epoch + 1)
        if stop:
            break
    steps.close()
    model.eval()
    return losses
