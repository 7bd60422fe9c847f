"""Reference solutions for Chapter 5 (course_lib/pretraining.py)."""

from __future__ import annotations

import io
import math
import random
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from course_lib import pretraining
from course_lib.cache import write_atomic
from course_lib.numerics import cross_entropy
from course_lib.pretraining import CHECKPOINT_FILE, IGNORE_INDEX, clip_gradients, make_lr_scheduler, make_optimizer


def pack_blocks(token_ids_per_doc: list[list[int]], block_size: int, eos_token_id: int) -> torch.Tensor:
    stream = [t for doc in token_ids_per_doc if doc for t in (*doc, eos_token_id)]
    n_blocks = len(stream) // block_size
    return torch.tensor(stream[:n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


def split_documents(n_documents: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    permutation = np.random.default_rng(seed).permutation(n_documents).tolist()
    n_validation = math.ceil(validation_fraction * n_documents)
    return permutation[n_validation:], permutation[:n_validation]


def batch_order(n_blocks: int, batch_size: int, seed: int) -> list[list[int]]:
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i:i + batch_size] for i in range(0, n_blocks - batch_size + 1, batch_size)]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    targets = labels[:, 1:]                                            # (batch, seq - 1): the next tokens
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, ignore_index)
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))   # (batch, seq - 1, vocab)
    return cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)


def mask_tokens(input_ids: torch.Tensor, *, vocab_size: int, mask_token_id: int,
                special_token_ids: Sequence[int] = (), seed: int, mlm_probability: float = 0.15,
                mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = input_ids.cpu().long()                                          # both results are torch.long
    shape = ids.shape
    special = torch.isin(ids, torch.tensor(list(special_token_ids), dtype=torch.long))
    probability = torch.full(shape, mlm_probability).masked_fill(special, 0.0)
    picked = torch.bernoulli(probability, generator=generator).bool()
    labels = ids.masked_fill(~picked, IGNORE_INDEX)
    masked = torch.bernoulli(torch.full(shape, mask_replace_prob), generator=generator).bool() & picked
    corrupted = ids.masked_fill(masked, mask_token_id)
    if mask_replace_prob < 1 and random_replace_prob > 0:
        # Conditional on not being masked: random_replace_prob of all picked tokens.
        p_random = random_replace_prob / (1 - mask_replace_prob)
        randomised = torch.bernoulli(torch.full(shape, p_random), generator=generator).bool() & picked & ~masked
        random_ids = torch.randint(vocab_size, shape, dtype=torch.long, generator=generator)
        corrupted = torch.where(randomised, random_ids, corrupted)
    return corrupted.to(input_ids.device), labels.to(input_ids.device)


def lr_at(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    embeddings = {f"{name}.weight" if name else "weight" for name, module in model.named_modules()
                  if isinstance(module, nn.Embedding)}
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 and name not in embeddings else no_decay).append(name)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _targets(micro_batch: dict[str, torch.Tensor]) -> int:
    """How many targets :func:`causal_lm_loss` counts in ``micro_batch``."""
    labels = micro_batch.get("labels", micro_batch["input_ids"])[:, 1:]
    counted = labels != IGNORE_INDEX
    if "attention_mask" in micro_batch:
        counted &= micro_batch["attention_mask"][:, 1:].bool()
    return int(counted.sum())


def train_steps(model: nn.Module, batches: Iterable[list[dict[str, torch.Tensor]]], settings: dict,
                optimizer: torch.optim.Optimizer | None = None,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                on_step: Callable[[dict], bool | None] | None = None) -> dict[str, list]:
    if optimizer is None:
        optimizer = make_optimizer(model, settings)
    if scheduler is None:
        scheduler = make_lr_scheduler(optimizer, settings)
    device_type = next(model.parameters()).device.type
    history = {"loss": [], "grad_norm": [], "lr": [], "tokens": []}
    model.train()
    for micro_batches in batches:
        n_targets = sum(_targets(mb) for mb in micro_batches)
        step_loss, tokens = 0.0, 0
        for mb in micro_batches:
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=settings["mixed_precision"] == "bf16"):
                logits = model(input_ids=mb["input_ids"], attention_mask=mb.get("attention_mask"),
                               position_ids=mb.get("position_ids")).logits
                loss = causal_lm_loss(logits, mb.get("labels", mb["input_ids"]), mb.get("attention_mask"),
                                      reduction="sum") / n_targets
            loss.backward()
            step_loss = step_loss + loss.detach()                    # a tensor: no wait for the device
            tokens += int(mb["attention_mask"].sum()) if "attention_mask" in mb else mb["input_ids"].numel()
        grad_norm = clip_gradients(model.parameters(), settings["max_grad_norm"])
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stats = {"loss": float(step_loss), "grad_norm": grad_norm.item(), "lr": lr, "tokens": tokens}
        for key, value in stats.items():
            history[key].append(value)
        if on_step is not None and on_step(stats):
            break
    return history


def mfu(tokens_per_second: float, flops_per_token: int, peak_flops: float, n_devices: int = 1) -> float:
    return 3 * flops_per_token * tokens_per_second / (peak_flops * n_devices)


class AdamW(pretraining.AdamW):
    """The reference of :meth:`course_lib.pretraining.AdamW.step`; the class supplies the rest."""

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if not state:                                          # p's first update: moments start at 0
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                if weight_decay != 0:
                    p.mul_(1 - lr * weight_decay)                      # decoupled: the weights, not the gradient
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - beta1)                                  # m = beta1 m + (1 - beta1) g
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)          # v = beta2 v + (1 - beta2) g^2
                if group["amsgrad"]:
                    v = torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                bias_correction1 = 1 - beta1**t
                bias_correction2 = 1 - beta2**t
                denominator = (v.sqrt() / math.sqrt(bias_correction2)).add_(eps)    # sqrt(v_hat) + eps
                p.addcdiv_(m, denominator, value=-lr / bias_correction1)            # p -= lr m_hat / (...)
        return loss


def clip_grad_norm_(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> torch.Tensor:
    parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]              # one per tensor
    total_norm = torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in norms]), norm_type)
    if error_if_nonfinite and not torch.isfinite(total_norm):
        raise RuntimeError(f"the total gradient norm is {total_norm.item()}: not finite, so it cannot be clipped")
    scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)                  # the same for every tensor
    for g in grads:
        g.mul_(scale.to(g.device))
    return total_norm


def save_checkpoint(directory: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, step: int, history: dict) -> Path:
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all(), "python": random.getstate()}
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "history": history, "rng": rng}, buffer)
    return write_atomic(Path(directory) / CHECKPOINT_FILE, buffer.getvalue())     # whole or not at all


def load_checkpoint(directory: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> tuple[int, dict]:
    state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location=next(model.parameters()).device,
                       weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    random.setstate(state["rng"]["python"])
    return state["step"], state["history"]
