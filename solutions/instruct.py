"""Reference solutions of Chapter 6 (instruction data and prompts)."""

from __future__ import annotations

import hashlib
import math
import random
import string
from typing import Sequence

import numpy as np
import torch

from course_lib.instruct import (IM_END, IM_START, _check_messages, fill_template, lsh_candidate_pairs,
                                 minhash_permutations, minhash_signatures, shingle_hash, template_slots)
from course_lib.instruction_data import normalize_text, word_shingles

_ALPACA_FIELDS = ("instruction", "input", "output", "system")
_TYPES = {"str": (str,), "int": (int,), "float": (int, float)}


def _text_field(record: dict, field: str, where: str, required: bool, non_blank: bool) -> str | None:
    """The value of ``field`` after the checks shared by every Alpaca field."""
    if field not in record:
        if required:
            raise ValueError(f"{where}: field {field!r} is missing")
        return None
    value = record[field]
    if type(value) is not str:
        raise ValueError(f"{where}: field {field!r} must be a str, got {type(value).__name__}")
    if non_blank and not value.strip():
        raise ValueError(f"{where}: field {field!r} is empty")
    return value


def alpaca_to_messages(records: list[dict], system: str | None = None) -> list[list[dict]]:
    conversations = []
    for i, record in enumerate(records):
        where = f"record {i}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: must be a dict with the fields {_ALPACA_FIELDS}, got {type(record).__name__}")
        unknown = [key for key in record if key not in _ALPACA_FIELDS]
        if unknown:
            raise ValueError(f"{where}: unknown field {unknown[0]!r} (Alpaca fields: {_ALPACA_FIELDS})")
        instruction = _text_field(record, "instruction", where, required=True, non_blank=True)
        output = _text_field(record, "output", where, required=True, non_blank=True)
        extra = _text_field(record, "input", where, required=False, non_blank=False) or ""
        own_system = _text_field(record, "system", where, required=False, non_blank=False)
        system_text = own_system if own_system else system
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "system", "content": system_text}] if system_text is not None else []
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        conversations.append(messages)
    return conversations


def messages_to_alpaca(conversations: list[list[dict]]) -> list[dict]:
    records = []
    for i, conversation in enumerate(conversations):
        where = f"record {i}"
        if not isinstance(conversation, list):
            raise ValueError(f"{where}: must be a list of messages, got {type(conversation).__name__}")
        _check_messages(f"{where}: messages", conversation)  # dicts with a known role and str content
        record = {}
        turns = conversation
        if turns and turns[0]["role"] == "system":
            record["system"] = turns[0]["content"]
            turns = turns[1:]
        offset = len(conversation) - len(turns)
        if len(turns) != 2:
            raise ValueError(f"{where}: an Alpaca record holds one user turn and one assistant turn, "
                             f"the conversation has {len(turns)} messages after the system message")
        for j, role in enumerate(("user", "assistant")):
            if turns[j]["role"] != role:
                raise ValueError(f"{where}: messages[{offset + j}]['role'] is {turns[j]['role']!r}, expected {role!r}")
            if not turns[j]["content"].strip():
                raise ValueError(f"{where}: messages[{offset + j}]['content'] is empty")
        records.append({"instruction": turns[0]["content"], "input": "", "output": turns[1]["content"], **record})
    return records


def render_chat(tokenizer_json: str, messages: list[dict], add_generation_prompt: bool = False) -> dict:
    from tokenizers import Tokenizer

    text, spans = "", []  # spans: (start, end) characters of what each assistant turn writes
    for message in messages:
        text += f"{IM_START}{message['role']}\n"
        start = len(text)
        text += message["content"] + IM_END
        if message["role"] == "assistant":
            spans.append((start, len(text)))
        text += "\n"
    if add_generation_prompt:
        text += f"{IM_START}assistant\n"
    encoding = Tokenizer.from_str(tokenizer_json).encode(text, add_special_tokens=False)
    mask = [int(any(s < end and start < e for s, e in spans)) for start, end in encoding.offsets]
    return {"text": text, "input_ids": list(encoding.ids), "assistant_masks": mask}


def exact_dedup(texts: list[str]) -> list[int]:
    seen, keep = set(), []
    for i, text in enumerate(texts):
        digest = hashlib.sha256(normalize_text(text).encode("utf-8")).digest()
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    return keep


def minhash_signatures(texts: list[str], num_perm: int = 128, seed: int = 1, ngram: int = 3) -> torch.Tensor:
    a, b = minhash_permutations(num_perm, seed)                          # (num_perm,) uint32 each
    signatures = np.full((len(texts), num_perm), (1 << 32) - 1, dtype=np.uint32)
    for t, text in enumerate(texts):
        x = np.array([shingle_hash(s) for s in word_shingles(text, ngram)], dtype=np.uint32)
        if x.size:
            signatures[t] = (a * x[:, None] + b).min(axis=0)             # (n_shingles, num_perm) -> (num_perm,)
    return torch.from_numpy(signatures.astype(np.int64))


def lsh_candidate_pairs(signatures: torch.Tensor, bands: int, rows: int) -> list[tuple[int, int]]:
    values = signatures.tolist()
    pairs = set()
    for band in range(bands):
        buckets: dict[tuple, list[int]] = {}
        for i, signature in enumerate(values):
            buckets.setdefault(tuple(signature[band * rows:(band + 1) * rows]), []).append(i)
        for members in buckets.values():
            pairs.update((members[x], members[y]) for x in range(len(members)) for y in range(x + 1, len(members)))
    return sorted(pairs)


def near_dedup(texts: list[str], threshold: float = 0.8, num_perm: int = 128, bands: int = 32, rows: int = 4,
               seed: int = 1, ngram: int = 3) -> dict:
    signatures = minhash_signatures(texts, num_perm, seed, ngram)        # (n, num_perm)
    candidates: dict[int, list[int]] = {}
    for i, j in lsh_candidate_pairs(signatures, bands, rows):
        candidates.setdefault(j, []).append(i)                           # i < j: earlier candidates of j
    kept, keep, duplicates = set(), [], []
    for i in range(len(texts)):
        match = None
        for j in sorted(candidates.get(i, [])):
            if j in kept:
                estimate = int((signatures[i] == signatures[j]).sum()) / num_perm
                if estimate >= threshold:
                    match = (i, j, estimate)
                    break
        if match is None:
            kept.add(i)
            keep.append(i)
        else:
            duplicates.append(match)
    return {"keep": keep, "duplicates": duplicates}


def find_contaminated(train_texts: list[str], eval_texts: list[str], n: int = 13) -> list[int]:
    long_grams: set[tuple[str, ...]] = set()
    short: dict[int, set[tuple[str, ...]]] = {}                         # length -> whole short eval texts
    for text in eval_texts:
        words = tuple(normalize_text(text).split())
        if len(words) >= n:
            long_grams.update(words[i:i + n] for i in range(len(words) - n + 1))
        elif words:
            short.setdefault(len(words), set()).add(words)
    lengths = ({n} if long_grams else set()) | set(short)
    contaminated = []
    for index, text in enumerate(train_texts):
        words = tuple(normalize_text(text).split())
        for length in lengths:
            grams = long_grams if length == n else short[length]
            if any(words[i:i + length] in grams for i in range(len(words) - length + 1)):
                contaminated.append(index)
                break
    return contaminated


def grouped_split(groups: list[str | int], test_size: float, validation_size: float = 0.0,
                  seed: int = 0) -> dict[str, list[int]]:
    number = {group: g for g, group in enumerate(dict.fromkeys(groups))}   # group -> 0 .. G-1 (first appearance)
    permutation = np.random.default_rng(seed).permutation(len(number)).tolist()
    n_test = math.ceil(test_size * len(number))
    n_validation = math.ceil(validation_size * len(number))
    if n_test + n_validation >= len(number):
        raise ValueError(f"{len(number)} groups leave none for training with test_size={test_size} "
                         f"and validation_size={validation_size}")
    part = {g: "test" for g in permutation[:n_test]}
    part.update({g: "validation" for g in permutation[n_test:n_test + n_validation]})
    split = {"train": [], "validation": [], "test": []}
    for row, group in enumerate(groups):
        split[part.get(number[group], "train")].append(row)
    return split


def fill_template(template: str, values: dict, types: dict | None = None) -> str:
    slots = []
    for _, name, spec, conversion in string.Formatter().parse(template):  # ValueError on unbalanced braces
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"slot {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
                             " is not supported: use {name} with name an identifier")
        slots.append(name)
    for name in slots:
        if name not in values:
            raise ValueError(f"slot {name!r} has no value")
    for name in list(values) + list(types or {}):
        if name not in slots:
            raise ValueError(f"{name!r} is not a slot of the template (slots: {sorted(set(slots))})")
    for name, kind in (types or {}).items():
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, _TYPES[kind]):
            raise TypeError(f"slot {name!r} must be of type {kind}, got {type(value).__name__} {value!r}")
    return template.format(**values)


def select_shots(lengths: list[int], budget: int, k: int, seed: int | None = None,
                 scores: torch.Tensor | None = None) -> list[int]:
    if scores is None:
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    else:
        order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    chosen, used = [], 0
    for i in order:
        if len(chosen) == k:
            break
        if used + lengths[i] <= budget:
            chosen.append(i)
            used += lengths[i]
    return chosen if scores is None else chosen[::-1]


def few_shot_prompt(question: str, shots: Sequence[dict] = (), chain_of_thought: bool = False) -> str:
    needed = ("question", "answer", "rationale") if chain_of_thought else ("question", "answer")
    blocks = []
    for i, shot in enumerate(shots):
        for field in needed:
            if not isinstance(shot, dict) or type(shot.get(field)) is not str:
                raise ValueError(f"shots[{i}]: field {field!r} must be a str")
        if chain_of_thought:
            answer = f"Let's think step by step. {shot['rationale']} So the answer is {shot['answer']}."
        else:
            answer = shot["answer"]
        blocks.append(f"Question: {shot['question']}\nAnswer: {answer}")
    blocks.append(f"Question: {question}\nAnswer:" + (" Let's think step by step." if chain_of_thought else ""))
    return "\n\n".join(blocks)


def sample_instructions(records: list[dict], templates: list[dict], n: int, seed: int) -> list[dict]:
    if n > len(records) * len(templates):
        raise ValueError(f"n={n} is more than the {len(records) * len(templates)} (record, template) pairs")
    rng = random.Random(seed)
    drawn, examples = set(), []
    while len(examples) < n:
        r = rng.randrange(len(records))
        t = rng.randrange(len(templates))
        if (r, t) in drawn:
            continue
        drawn.add((r, t))
        filled = {}
        for field in ("instruction", "output"):
            slots = template_slots(templates[t][field])
            missing = [s for s in slots if s not in records[r]]
            if missing:
                raise ValueError(f"record {r} has no field {missing[0]!r}, which template {t} needs")
            filled[field] = fill_template(templates[t][field], {s: records[r][s] for s in slots})
        examples.append({**filled, "record": r, "template": t})
    return examples
