"""Chapter 3: the course's language model against Hugging Face's ``LlamaForCausalLM``.

Both models have the same Llama-style architecture and the same weights (converted with
:func:`~course_lib.language_model.to_llama`); each row times one training step's forward and backward
pass (next-token loss on random tokens, gradients of every weight) with the same attention
implementation on both sides: ``sdpa`` (torch's fused kernel) and ``eager`` (the course's Chapter 2
attention against Llama's eager attention), the two models timed in turns. A ratio (course time /
Llama time) at or below 1 means the course's model is as fast. On the CPU: the course's ``"cpu"`` size (about 4M parameters), 4
sequences of 256 tokens, float32. On CUDA: the ``"gpu"`` size (about 100M parameters), 8 sequences
of 1,024 tokens, bfloat16 weights.
"""

from __future__ import annotations

import torch

from benchmarks.timing import Row, interleaved_ms
from course_lib.language_model import CourseLMForCausalLM, course_lm_config, to_llama

SETTINGS = {"cpu": dict(size="cpu", batch=4, seq_len=256, dtype=torch.float32, repeats=9),
            "cuda": dict(size="gpu", batch=8, seq_len=1024, dtype=torch.bfloat16, repeats=10)}


def _train_step(model, input_ids):
    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids, labels=input_ids, use_cache=False).loss.backward()

    return step


def run(device: torch.device) -> list[Row]:
    settings = SETTINGS[device.type]
    torch.manual_seed(0)
    course = CourseLMForCausalLM(course_lm_config(settings["size"])).to(device, settings["dtype"]).train()
    llama = to_llama(course).train()
    input_ids = torch.randint(0, course.config.vocab_size, (settings["batch"], settings["seq_len"]), device=device)
    rows = []
    for implementation in ("sdpa", "eager"):
        course.set_attn_implementation(implementation)
        llama.set_attn_implementation(implementation)
        course_ms, llama_ms = interleaved_ms(_train_step(course, input_ids), _train_step(llama, input_ids), device,
                                             settings["repeats"])
        tokens = settings["batch"] * settings["seq_len"]
        rows.append(Row("lm fwd+bwd", implementation, device.type, course_ms, llama_ms,
                        f"LlamaForCausalLM {implementation}, same weights, {settings['size']} size, "
                        f"{tokens} tokens, {str(settings['dtype']).removeprefix('torch.')}; "
                        f"course {1000 * tokens / course_ms:,.0f} tok/s"))
    return rows
