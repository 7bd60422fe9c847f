"""Chapter 1: the course's BPE training and encoding against ``tokenizers`` and ``tiktoken``.

On the ``train`` split of the course corpus (about 1.9 MB on Python 3.11) at a 4,096-token
vocabulary: training time against the ``tokenizers`` BPE trainer (Rust, all cores), and encoding
time against ``tiktoken`` (Rust) and ``tokenizers`` built from the *same* merges. The reference
encoder caches the ids of each distinct pre-token per tokenizer: "cold" is the first encoding with a
tokenizer (each repeat uses one the process has not seen), "warm" a repeat with every pre-token
already cached. CPU only: tokenization does not run on a GPU.
"""

from __future__ import annotations

import time
from statistics import median

import torch

from benchmarks.timing import Row, measure_ms
from course_lib import tokenization as T
from course_lib.corpus import load_corpus

VOCAB_SIZE = 4096
EOT = "<|endoftext|>"


def _tokenizers_trainer_ms(documents: list[str], device: torch.device) -> float:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    def train():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(T.GPT2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(documents, trainer)

    return measure_ms(train, device, repeats=3, min_time_s=0.0)


def _cold_encode_ms(vocab, merges, text, repeats: int = 3) -> float:
    """Median time of a first encoding, each with a tokenizer not seen before (one merge fewer)."""
    times = []
    for r in range(1, repeats + 1):
        m = merges[:len(merges) - r]
        v = vocab[:256 + len(m)] + [EOT.encode()]
        start = time.perf_counter()
        T.bpe_encode(v, m, text, [EOT])
        times.append(time.perf_counter() - start)
    return 1000 * median(times)


def run(device: torch.device) -> list[Row]:
    if device.type != "cpu":
        return []
    import tiktoken
    from tokenizers import Tokenizer

    documents = load_corpus("train")
    text = EOT.join(documents)
    size = f"{len(text.encode()) / 1e6:.1f}MB"
    rows = []

    course_ms = measure_ms(lambda: T.train_bpe(documents, VOCAB_SIZE, [EOT]), device, repeats=3, min_time_s=0.0)
    rows.append(Row("train_bpe", f"vocab {VOCAB_SIZE}", str(device), course_ms,
                    _tokenizers_trainer_ms(documents, device), "tokenizers BpeTrainer"))

    vocab, merges = T.train_bpe(documents, VOCAB_SIZE, [EOT])
    n = 256 + len(merges)
    enc = tiktoken.Encoding(name="course", pat_str=T.GPT2_SPLIT_PATTERN,
                            mergeable_ranks={vocab[i]: i for i in range(n)}, special_tokens={EOT: len(vocab) - 1})
    hf = Tokenizer.from_str(T.to_tokenizer_json(vocab, merges, [EOT]))
    assert T.bpe_encode(vocab, merges, text, [EOT]) == enc.encode(text, allowed_special="all"), "ids differ"
    tiktoken_ms = measure_ms(lambda: enc.encode(text, allowed_special="all"), device, repeats=5, min_time_s=0.0)
    hf_ms = measure_ms(lambda: hf.encode(text), device, repeats=3, min_time_s=0.0)
    cold_ms = _cold_encode_ms(vocab, merges, text)
    warm_ms = measure_ms(lambda: T.bpe_encode(vocab, merges, text, [EOT]), device, repeats=3, min_time_s=0.0)
    rows.append(Row("bpe_encode", f"cold {size}", str(device), cold_ms, tiktoken_ms, "tiktoken, same ranks"))
    rows.append(Row("bpe_encode", f"warm {size}", str(device), warm_ms, tiktoken_ms, "tiktoken, same ranks"))
    rows.append(Row("bpe_encode", f"cold {size}", str(device), cold_ms, hf_ms, "tokenizers, tokenizer.json"))
    return rows
