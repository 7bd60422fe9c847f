"""Chapter 4: greedy decoding with the course's KV cache against Hugging Face ``generate()`` and
against the loop that recomputes the whole prefix every step.

For 32 to 512 new tokens after a 16-token prompt (batch 1), each row times one whole decode of the
same random model and prompt: the course's :func:`~course_lib.generation.cached_greedy_search`
against ``model.generate(do_sample=False)`` (``ratio`` below 1 means the course is faster) and against
the course's :func:`~course_lib.generation.greedy_search` without a cache (the library column then
says how many times faster the cache is). Without a cache, step ``t`` runs ``prompt + t`` positions
through every layer, so a decode of ``n`` tokens costs ``O(n^2)`` positions instead of ``O(n)``; the
cache's own reads still grow with the length (Pope et al., 2022). Models: a Llama of the course LM's
CPU size (4 layers, width 256, 4,096-token vocabulary) and, where Chapter 3 is available, the
course's own LM of that size with torch's fused attention. No EOS is set, so every decode runs to
``max_new_tokens``; the tokens are checked to agree before timing. The course and ``generate()`` are
timed in turns (a shared machine drifts between back-to-back runs); the no-cache loop, slow at 512
tokens, runs once per length (32, 128 and 512 tokens). On the CPU everything runs on one thread:
batch-1 decoding is a chain of small matrix-vector products, and on a shared machine parallel kernels
stall far more than they gain.
"""

from __future__ import annotations

import torch

from benchmarks.timing import Row, interleaved_ms, seconds
from course_lib import generation

NEW_TOKENS = (32, 64, 128, 256, 512)
NO_CACHE_TOKENS = (32, 128, 512)   # the no-cache loop is slow: timed once, at these lengths only
PROMPT_LEN = 16


def _models(device: torch.device) -> list[tuple[str, torch.nn.Module]]:
    size = dict(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                max_positions=PROMPT_LEN + max(NEW_TOKENS), initializer_range=0.02)
    models = [("llama", generation.random_causal_lm("llama", **size))]
    try:
        from course_lib.language_model import CourseLMForCausalLM, course_lm_config
    except ImportError:  # Chapter 3 not present
        return [(name, m.to(device)) for name, m in models]
    torch.manual_seed(0)
    config = course_lm_config("cpu", "llama", vocab_size=4096, max_position_embeddings=PROMPT_LEN + max(NEW_TOKENS),
                              attn_implementation="sdpa", bos_token_id=1, eos_token_id=2, pad_token_id=0)
    models.append(("course_lm", CourseLMForCausalLM(config).eval()))
    return [(name, m.to(device)) for name, m in models]


def _rows(name: str, model: torch.nn.Module, device: torch.device) -> list[Row]:
    model.generation_config.eos_token_id = None  # decode every requested token
    input_ids = torch.randint(3, model.config.vocab_size, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(0))
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids)
    rows = []
    for n in NEW_TOKENS:
        def course():
            return generation.cached_greedy_search(model, input_ids, attention_mask, max_new_tokens=n)

        def library():
            with torch.inference_mode():
                return model.generate(input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=n,
                                      pad_token_id=0)

        def no_cache():
            return generation.greedy_search(model, input_ids, attention_mask, max_new_tokens=n)

        ours, theirs = course(), library()
        if not torch.equal(ours, theirs):
            raise AssertionError(f"{name}, {n} new tokens: the course's tokens differ from generate()'s")
        course_ms, library_ms = interleaved_ms(course, library, device, repeats=7 if n <= 64 else 3)
        rows.append(Row(f"greedy {name}", f"new={n}", str(device), course_ms, library_ms,
                        f"HF generate(); course {1000 * n / course_ms:.0f} tok/s, HF {1000 * n / library_ms:.0f} tok/s"))
        if n in NO_CACHE_TOKENS:
            no_cache_ms = 1000 * seconds(no_cache, device)   # one run: long enough to be stable
            rows.append(Row(f"greedy {name}", f"new={n}", str(device), course_ms, no_cache_ms,
                            f"no cache (greedy_search, one run): the cache is {no_cache_ms / course_ms:.1f}x faster"))
    return rows


def run(device: torch.device) -> list[Row]:
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)   # batch-1 decoding is latency-bound; parallel kernels stall on a busy machine
    try:
        return [row for name, model in _models(device) for row in _rows(name, model, device)]
    finally:
        torch.set_num_threads(threads)
