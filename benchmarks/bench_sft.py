"""Chapter 7: the course's fine-tuning step against TRL's ``SFTTrainer`` on the same model and data,
padded and packed.

Both train copies of one freshly initialised course model (Chapter 5's ``build_model``, the same
weights) on the same conversations of the course instruction data set, rendered with the chat
template, with the loss on the assistant's tokens only: the course through Chapter 5's
:func:`~course_lib.pretraining.train_steps` on :func:`~course_lib.sft.sft_step_batches` (padded by
:func:`~course_lib.sft.collate_chat`, or packed by best fit decreasing and
:func:`~course_lib.sft.pack_examples`), TRL through ``SFTTrainer`` with ``assistant_only_loss`` and
``packing``/``padding_free`` on the same preset's batch sizes. The two sides draw different
conversations per step (TRL keeps the data set's order), so each row compares the median wall time
per 1,000 trained-on (non-padding) tokens after a warm-up step; the library column gives both
throughputs in tokens/s.

On CPU: the ``"cpu"`` presets (a ~4M-parameter model, rows of up to 256 tokens), float32. On CUDA:
the ``"gpu"`` presets (~100M parameters, rows of up to 2,048 tokens) in bf16.
"""

from __future__ import annotations

import dataclasses
import tempfile
from statistics import median

import torch

from benchmarks.timing import Row, loop_step_timer, trainer_step_timer
from course_lib import pretraining, sft

STEPS = 6  # the first is a warm-up


def _config(device: torch.device, packing: bool) -> sft.FinetuneConfig:
    name = "gpu" if device.type == "cuda" else "cpu"
    return sft.preset(name, packing=packing, total_steps=STEPS, warmup_steps=1, train_examples=400)


def _course(config, model, data, tokenizer, device) -> tuple[list[float], list[int]]:
    steps = list(sft.sft_step_batches(data, data.units(config), config, tokenizer.pad_token_id, device=device))
    times, on_step = loop_step_timer(device)

    history = pretraining.train_steps(model, steps, config.settings(), on_step=on_step)
    return times, history["tokens"]


def _trainer(config, model, data, tokenizer, device) -> tuple[list[float], list[int]]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    timer = trainer_step_timer(device)
    conversations = [row["messages"] for row in sft.training_rows(config)]  # the rows prepare_sft_data rendered
    with tempfile.TemporaryDirectory() as output_dir:
        args = SFTConfig(
            output_dir=output_dir, assistant_only_loss=True, packing=config.packing, padding_free=config.packing,
            max_length=config.pack_length, per_device_train_batch_size=config.micro_batch_size,
            gradient_accumulation_steps=config.accumulation_steps, max_steps=STEPS, learning_rate=config.lr,
            warmup_steps=config.warmup_steps, lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio}, weight_decay=config.weight_decay,
            adam_beta1=config.betas[0], adam_beta2=config.betas[1], adam_epsilon=config.eps,
            max_grad_norm=config.max_grad_norm, bf16=config.mixed_precision == "bf16", use_cpu=device.type == "cpu",
            train_sampling_strategy="sequential", report_to="none", save_strategy="no", logging_strategy="no",
            disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"messages": conversations}),
                             processing_class=tokenizer, callbacks=[timer])
        loader = trainer.get_train_dataloader()
        tokens = []
        for i, batch in enumerate(loader):   # the tokens of each step (sequential: the order train() takes)
            if i // config.accumulation_steps >= STEPS:
                break
            n = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
            if i % config.accumulation_steps == 0:
                tokens.append(0)
            tokens[-1] += n
        trainer.train()
    return timer.times, tokens


def run(device: torch.device) -> list[Row]:
    from course_lib.instruct import chat_tokenizer

    tokenizer = chat_tokenizer(pretraining.course_tokenizer())
    rows = []
    for packing in (False, True):
        config = _config(device, packing)
        base = pretraining.preset(config.base)
        data = sft.prepare_sft_data(tokenizer, config)
        first = pretraining.build_model(base, tokenizer)
        state = {k: v.clone() for k, v in first.state_dict().items()}
        ms_per_kilotoken, throughput = {}, {}
        for name, timed in (("course", _course), ("trl", _trainer)):
            model = pretraining.build_model(base, tokenizer)
            model.load_state_dict(state)
            model.config.use_cache = False
            times, tokens = timed(dataclasses.replace(config), model.to(device), data, tokenizer, device)
            per_step = [t / n for t, n in zip(times[1:], tokens[1:])]
            ms_per_kilotoken[name] = 1e6 * median(per_step)
            throughput[name] = 1e3 / ms_per_kilotoken[name] * 1e3
            del model
        library = f"TRL SFTTrainer; tokens/s {throughput['course']:.0f} vs {throughput['trl']:.0f}"
        rows.append(Row("sft", "packed" if packing else "padded", device.type, ms_per_kilotoken["course"],
                        ms_per_kilotoken["trl"], library))
    return rows
