"""Chapter 5: the course's training loop against Hugging Face's ``Trainer`` on the same model and data.

Both train the same freshly initialised course model (the same weights) on the same packed blocks
with AdamW, warmup + cosine decay and gradient clipping: the course through
:func:`~course_lib.pretraining.train_steps` (its optimizer from :func:`make_optimizer`, fused on
CUDA), the library through ``transformers.Trainer`` (``adamw_torch_fused``, the same schedule).
Each row is the median wall time of one optimizer step after a warm-up step, their ratio, and in
the library column both throughputs (tokens/s) and model FLOPs utilisation (Chapter 3's FLOP count;
the peak is the datasheet's dense bf16 figure on known GPUs and a measured matrix product on CPUs).

On CPU: the ``"cpu"`` preset's model (~4M parameters) on 8 blocks of 128 tokens per step, float32.
On CUDA: the ``"gpu"`` preset (~100M parameters) on 16 blocks of 1,024 tokens per step in bf16 with
torch's fused attention and ``torch.compile`` on both sides; the target there is >= 45% MFU.
"""

from __future__ import annotations

import dataclasses
import tempfile
from statistics import median

import torch

from benchmarks.timing import Row, loop_step_timer, trainer_step_timer
from course_lib import pretraining

STEPS = 6  # the first is a warm-up (and compiles)


def _setup(device: torch.device) -> tuple[pretraining.PretrainConfig, object, torch.Tensor]:
    if device.type == "cuda":
        config = pretraining.preset("gpu", micro_batch_size=16, accumulation_steps=1, total_steps=STEPS, warmup_steps=1)
    else:
        config = pretraining.preset("cpu", micro_batch_size=8, total_steps=STEPS, warmup_steps=1)
    tokenizer = pretraining.course_tokenizer()
    blocks = pretraining.prepare_data(tokenizer, config.block_size).train_blocks[:STEPS * config.micro_batch_size]
    return config, tokenizer, blocks


def _course_step_seconds(config, model, blocks, device) -> list[float]:
    wrapped = torch.compile(model) if config.compile else model
    steps = list(pretraining.step_batches(blocks, dataclasses.replace(config, total_steps=STEPS), device=device))
    times, on_step = loop_step_timer(device)

    pretraining.train_steps(wrapped, steps, config.settings(), on_step=on_step)
    return times


def _trainer_step_seconds(config, model, blocks, device) -> list[float]:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    timer = trainer_step_timer(device)
    data = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()}).with_format("torch")
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=config.micro_batch_size,
            gradient_accumulation_steps=config.accumulation_steps, max_steps=STEPS, learning_rate=config.lr,
            weight_decay=config.weight_decay, adam_beta1=config.betas[0], adam_beta2=config.betas[1],
            adam_epsilon=config.eps, max_grad_norm=config.max_grad_norm, warmup_steps=config.warmup_steps,
            lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio},
            bf16=config.mixed_precision == "bf16", torch_compile=config.compile, use_cpu=device.type == "cpu",
            optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch", report_to="none",
            save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
        Trainer(model=model, args=args, train_dataset=data, callbacks=[timer]).train()
    return timer.times


def run(device: torch.device) -> list[Row]:
    config, tokenizer, blocks = _setup(device)
    first = pretraining.build_model(config, tokenizer)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float32
    peak = pretraining.peak_flops(device, dtype)
    flops = pretraining.model_flops_per_token(first.config, config.block_size)
    tokens = config.tokens_per_step()
    seconds = {}
    for name, timed in (("course", _course_step_seconds), ("trainer", _trainer_step_seconds)):
        model = pretraining.build_model(config, tokenizer)
        model.load_state_dict(state)
        seconds[name] = median(timed(config, model.to(device), blocks, device)[1:])
        del model
    throughput = {name: tokens / s for name, s in seconds.items()}
    utilisation = {name: pretraining.mfu(tps, flops, peak) for name, tps in throughput.items()}
    params = sum(p.numel() for p in first.parameters())
    library = (f"HF Trainer; tokens/s {throughput['course']:.0f} vs {throughput['trainer']:.0f}; "
               f"MFU {utilisation['course']:.1%} vs {utilisation['trainer']:.1%} of {peak / 1e12:.2f} TFLOP/s")
    return [Row("pretraining", f"{params / 1e6:.0f}M step", device.type, 1000 * seconds["course"],
                1000 * seconds["trainer"], library)]
