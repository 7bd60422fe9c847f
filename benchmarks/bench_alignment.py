"""Chapter 9: the course's DPO step against TRL's ``DPOTrainer``, and the RL loop's rollouts with and
without a KV cache.

DPO: copies of one freshly initialised course model (Chapter 5's ``build_model``, the ``"cpu"`` or
``"gpu"`` size) as the policy and the reference, on the same preference pairs (questions of Chapter 6's
data with the data set's answer chosen and another question's answer rejected, rendered with the chat
template). The course step is :func:`~course_lib.alignment.pair_batch`, the policy's
:func:`~course_lib.alignment.batch_log_probs`, :func:`~course_lib.alignment.dpo_loss` against the
reference's log-probabilities computed in the same step, and Chapter 5's update; TRL's is one
``DPOTrainer`` step (its reference forward included), on the same batch size. Median wall time per step
after a warm-up step.

Rollouts: answers to the same questions drawn by Chapter 4's :func:`~course_lib.generation.sample`
(a KV cache) against ``generate(do_sample=True, use_cache=False)``, which runs the whole sequence
again for every new token: new tokens per second, and the ratio of milliseconds per rollout batch.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from statistics import median

import torch

from benchmarks.timing import Row, interleaved_ms, seconds, trainer_step_timer
from course_lib import alignment, pretraining

STEPS = 6        # the first is a warm-up
PAIRS = 16       # pairs per step


def _pairs(tokenizer, n: int) -> list[dict]:
    from course_lib.instruction_data import instruction_dataset
    from course_lib.sft import end_token_ids, render_examples

    rows = list(instruction_dataset("train", None).select(range(n + 1)))
    examples = render_examples(rows, tokenizer)
    stops = end_token_ids(tokenizer)
    answers = [alignment.gold_completion(e, stops) for e in examples]
    return [{"prompt_ids": e["prompt_ids"], "chosen_ids": answers[i], "rejected_ids": answers[i + 1],
             "prompt": rows[i]["messages"][0]["content"], "chosen": rows[i]["output"], "rejected": rows[i + 1]["output"]}
            for i, e in enumerate(examples[:n])]


def _course_dpo(config, policy, reference, tokenizer, pairs, device) -> list[float]:
    optimizer, scheduler = alignment._optimization(policy, config)
    times = []
    for step in range(STEPS):
        chunk = pairs[step * PAIRS:(step + 1) * PAIRS]

        def one_step():
            batch = alignment.pair_batch(chunk, tokenizer.pad_token_id)
            with torch.no_grad():
                ref_chosen, ref_rejected = alignment.batch_log_probs(reference, batch).chunk(2)
            chosen, rejected = alignment.batch_log_probs(policy, batch).chunk(2)
            loss = alignment.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=config.beta)["losses"].mean()
            alignment._step(policy, loss, optimizer, scheduler, config)

        times.append(seconds(one_step, device))
    return times


def _trl_dpo(config, policy, reference, tokenizer, pairs, device) -> list[float]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    timer = trainer_step_timer(device)
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p["prompt"]}] for p in pairs],
                              "chosen": [[{"role": "assistant", "content": p["chosen"]}] for p in pairs],
                              "rejected": [[{"role": "assistant", "content": p["rejected"]}] for p in pairs]})
    with tempfile.TemporaryDirectory() as output_dir:
        args = DPOConfig(output_dir=output_dir, per_device_train_batch_size=PAIRS, max_steps=STEPS,
                         learning_rate=config.lr, beta=config.beta, max_grad_norm=config.max_grad_norm,
                         use_cpu=device.type == "cpu", bf16=False, report_to="none", save_strategy="no",
                         logging_strategy="no", disable_tqdm=True)
        trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data,
                             processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    return timer.times


def _rollouts(model, tokenizer, device) -> Row:
    from course_lib.generation import sample
    from course_lib.instruction_data import instruction_dataset
    from course_lib.sft import end_token_ids, render_examples
    from course_lib.tasks import pad_batch

    rows = list(instruction_dataset("train", None).select(range(16)))
    prompts = [e["prompt_ids"] for e in render_examples(rows, tokenizer)]
    input_ids, attention_mask = (t.to(device) for t in pad_batch(prompts, tokenizer.pad_token_id, left=True))
    new_tokens = 32
    kwargs = dict(max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)

    def cached():
        return sample(model, input_ids, attention_mask, seed=0, **kwargs)

    def uncached():
        torch.manual_seed(0)
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True, top_k=0,
                              use_cache=False, min_new_tokens=new_tokens, **kwargs)

    with torch.no_grad():
        course_ms, library_ms = interleaved_ms(cached, uncached, device, repeats=3)
    tokens = len(prompts) * new_tokens
    library = (f"generate(use_cache=False); new tokens/s {1000 * tokens / course_ms:.0f} with the cache vs "
               f"{1000 * tokens / library_ms:.0f} without")
    return Row("alignment", "rollouts", device.type, course_ms, library_ms, library)


def run(device: torch.device) -> list[Row]:
    from course_lib.instruct import chat_tokenizer

    tokenizer = chat_tokenizer(pretraining.course_tokenizer())
    size = "gpu" if device.type == "cuda" else "cpu"
    config = dataclasses.replace(alignment.align_preset("dpo"), total_steps=STEPS, warmup_steps=1)
    pairs = _pairs(tokenizer, STEPS * PAIRS)
    first = pretraining.build_model(pretraining.preset(size), tokenizer).to(device)
    step_ms = {}
    for name, timed in (("course", _course_dpo), ("trl", _trl_dpo)):
        policy = copy.deepcopy(first)
        reference = copy.deepcopy(first).eval()
        policy.config.use_cache = False
        step_ms[name] = 1000 * median(timed(config, policy, reference, tokenizer, pairs, device)[1:])
    rows = [Row("alignment", "dpo step", device.type, step_ms["course"], step_ms["trl"],
                f"TRL DPOTrainer, {PAIRS} pairs per step")]
    rows.append(_rollouts(first.eval(), tokenizer, device))
    return rows
