"""The settings of Chapter 5's optimisation loop, which every training run of the course carries.

:class:`LoopSettings` holds them: the learning-rate schedule (warm-up, cosine decay to a floor), AdamW's
hyper-parameters, gradient clipping and mixed precision. Each run's configuration extends it
(``PretrainConfig`` in Chapter 5, ``FinetuneConfig`` in Chapter 7, ``AlignConfig`` in Chapter 9) with
its own defaults, and ``settings()`` gives the plain dict that Chapter 5's ``train_steps`` takes.

It is not a chapter module: the chapter modules import it when they are imported, and a student's
unfinished (or broken) chapter file must never stop another chapter from importing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoopSettings:
    """The optimisation settings of one training run (defaults: Chapter 5's pre-training)."""

    total_steps: int = 400
    warmup_steps: int = 20
    lr: float = 3e-3                        # the peak learning rate, after warm-up
    min_lr_ratio: float = 0.1               # the cosine decay's floor, a fraction of lr
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0       # None: no clipping
    mixed_precision: str = "no"             # "bf16": autocast to bfloat16 (GPUs; CPUs with AMX)

    def settings(self) -> dict:
        """These settings as the plain dict (JSON types) that ``train_steps`` takes; ``fused_optimizer``
        (a field of the runs that offer it, such as Chapter 5's) is False where the run has none."""
        return {"lr": self.lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "min_lr_ratio": self.min_lr_ratio, "weight_decay": self.weight_decay, "betas": list(self.betas),
                "eps": self.eps, "max_grad_norm": self.max_grad_norm, "mixed_precision": self.mixed_precision,
                "fused_optimizer": getattr(self, "fused_optimizer", False)}
