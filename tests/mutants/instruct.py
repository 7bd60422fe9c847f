"""Plausible wrong answers to Chapter 6's exercises. Each must fail at least one graded test
(``pytest --against mutants``). They are kept out of the student handout.

They run in solution mode, so where a wrong variant needs a correct piece of an exercise (the checks
of ``alpaca_to_messages``, ``minhash_signatures`` inside ``near_dedup``) it calls ``course_lib.instruct``,
which runs the reference. The variants that ``tests/grading/test_chapter_grading.py`` puts in a student's
file (``PARTLY_WRONG``) call no exercise of their own name: in that file it would be themselves.
"""

import hashlib
import math
import random
import string

import numpy as np
import torch

from course_lib import instruct as I
from course_lib.instruction_data import normalize_text, word_shingles


# -- 6.1 alpaca_to_messages --------------------------------------------------------------------------------
def _alpaca(records, system, *, join="\n\n", record_system_wins=True, check=True, lower=False):
    out = []
    for i, record in enumerate(records):
        if check:
            I.alpaca_to_messages([record])  # the reference's checks (its messages name record 0)
        extra = record.get("input", "")
        user = record["instruction"] + (join + extra if extra.strip() else "")
        own = record.get("system")
        chosen = (own or system) if record_system_wins else (system if system is not None else own)
        messages = [{"role": "system", "content": chosen}] if chosen is not None else []
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
        if lower:
            for m in messages:
                m["content"] = m["content"].lower()
        out.append(messages)
    return out


def alpaca_input_joined_with_one_newline(records, system=None):
    return _alpaca(records, system, join="\n")


def alpaca_system_argument_overrides_the_record(records, system=None):
    return _alpaca(records, system, record_system_wins=False)


def alpaca_lowercased_like_the_seed(records, system=None):
    return _alpaca(records, system, lower=True)


def alpaca_without_checks(records, system=None):
    return _alpaca([r for r in records if isinstance(r, dict)], system, check=False)


def alpaca_errors_without_the_record_index(records, system=None):
    for record in records:
        I.alpaca_to_messages([record])
    return I.alpaca_to_messages(records, system)


# -- 6.2 messages_to_alpaca --------------------------------------------------------------------------------
def messages_to_alpaca_taking_the_first_two_turns(conversations):
    records = []
    for conversation in conversations:
        system = [m["content"] for m in conversation if m["role"] == "system"]
        user = next(m["content"] for m in conversation if m["role"] == "user")
        assistant = next(m["content"] for m in conversation if m["role"] == "assistant")
        records.append({"instruction": user, "input": "", "output": assistant,
                        **({"system": system[0]} if system else {})})
    return records


def messages_to_alpaca_splitting_off_the_input(conversations):
    records = I.messages_to_alpaca(conversations)
    for record in records:
        if "\n\n" in record["instruction"]:
            record["instruction"], record["input"] = record["instruction"].split("\n\n", 1)
    return records


def messages_to_alpaca_without_role_checks(conversations):
    records = []
    for i, conversation in enumerate(conversations):
        turns = [m for m in conversation if m.get("role") != "system"]
        if len(turns) != 2:
            raise ValueError(f"record {i}: expected two turns")
        records.append({"instruction": turns[0]["content"], "input": "", "output": turns[1]["content"]})
    return records


# -- 6.3 render_chat -----------------------------------------------------------------------------------
def _render(tokenizer_json, messages, add_generation_prompt, *, header_in_mask=False, im_end_in_mask=True,
            newline_in_mask=False, only_last=False, prompt_twice=False, all_ones=False):
    from tokenizers import Tokenizer

    text, spans = "", []
    for message in messages:
        header_start = len(text)
        text += f"<|im_start|>{message['role']}\n"
        start = header_start if header_in_mask else len(text)
        text += message["content"] + ("<|im_end|>" if im_end_in_mask else "")
        end = len(text)
        text += "" if im_end_in_mask else "<|im_end|>"
        text += "\n"
        if newline_in_mask:
            end = len(text)
        if message["role"] == "assistant":
            spans.append((start, end))
    if add_generation_prompt:
        text += "<|im_start|>assistant\n" * (2 if prompt_twice else 1)
    if only_last:
        spans = spans[-1:]
    encoding = Tokenizer.from_str(tokenizer_json).encode(text, add_special_tokens=False)
    mask = [1 if all_ones else int(any(s < e and a < b for a, b in spans)) for s, e in encoding.offsets]
    return {"text": text, "input_ids": list(encoding.ids), "assistant_masks": mask}


def render_chat_mask_covering_the_prompt(tokenizer_json, messages, add_generation_prompt=False):
    return _render(tokenizer_json, messages, add_generation_prompt, all_ones=True)


def render_chat_mask_with_the_assistant_header(tokenizer_json, messages, add_generation_prompt=False):
    return _render(tokenizer_json, messages, add_generation_prompt, header_in_mask=True)


def render_chat_mask_without_im_end(tokenizer_json, messages, add_generation_prompt=False):
    return _render(tokenizer_json, messages, add_generation_prompt, im_end_in_mask=False)


def render_chat_mask_of_the_last_assistant_turn_only(tokenizer_json, messages, add_generation_prompt=False):
    return _render(tokenizer_json, messages, add_generation_prompt, only_last=True)


def render_chat_generation_prompt_appended_twice(tokenizer_json, messages, add_generation_prompt=False):
    return _render(tokenizer_json, messages, add_generation_prompt, prompt_twice=True)


def render_chat_mask_with_the_newline(tokenizer_json, messages, add_generation_prompt=False):
    return _render(tokenizer_json, messages, add_generation_prompt, newline_in_mask=True)


# -- 6.4 exact_dedup -----------------------------------------------------------------------------------
def exact_dedup_normalising_the_callers_texts(texts):
    texts[:] = [normalize_text(t) for t in texts]
    return I.exact_dedup(texts)


def near_dedup_normalising_the_callers_texts(texts, threshold=0.8, num_perm=128, bands=32, rows=4, seed=1, ngram=3):
    texts[:] = [normalize_text(t) for t in texts]
    return I.near_dedup(texts, threshold, num_perm, bands, rows, seed, ngram)


def contaminated_normalising_the_callers_texts(train_texts, eval_texts, n=13):
    train_texts[:] = [normalize_text(t) for t in train_texts]
    return I.find_contaminated(train_texts, eval_texts, n)


def grouped_split_numbering_the_callers_groups(groups, test_size, validation_size=0.0, seed=0):
    first = {}
    groups[:] = [first.setdefault(g, len(first)) for g in groups]
    return I.grouped_split(groups, test_size, validation_size, seed)


def exact_dedup_of_raw_text(texts):
    seen, keep = set(), []
    for i, text in enumerate(texts):
        if text not in seen:
            seen.add(text)
            keep.append(i)
    return keep


def exact_dedup_keeping_the_last(texts):
    last = {normalize_text(t): i for i, t in enumerate(texts)}
    return sorted(last.values())


def exact_dedup_lowercase_only(texts):
    seen, keep = set(), []
    for i, text in enumerate(texts):
        key = text.lower().strip()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


# -- 6.5 minhash_signatures --------------------------------------------------------------------------------
def _minhash(texts, num_perm, seed, ngram, *, reduce="min", hash_fn=I.shingle_hash, shingles=word_shingles,
             empty=(1 << 32) - 1):
    a, b = I.minhash_permutations(num_perm, seed)
    out = np.full((len(texts), num_perm), empty, dtype=np.uint32)
    for t, text in enumerate(texts):
        x = np.array([hash_fn(s) for s in shingles(text, ngram)], dtype=np.uint32)
        if x.size:
            values = a * x[:, None] + b
            out[t] = values.min(axis=0) if reduce == "min" else values.max(axis=0)
    return torch.from_numpy(out.astype(np.int64))


def minhash_max_instead_of_min(texts, num_perm=128, seed=1, ngram=3):
    return _minhash(texts, num_perm, seed, ngram, reduce="max")


def minhash_of_sha1_without_mixing(texts, num_perm=128, seed=1, ngram=3):
    return _minhash(texts, num_perm, seed, ngram,
                    hash_fn=lambda s: int.from_bytes(hashlib.sha1(s.encode()).digest()[:4], "little"))


def minhash_of_character_shingles(texts, num_perm=128, seed=1, ngram=3):
    def chars(text, n):
        t = normalize_text(text)
        return list(dict.fromkeys(t[i:i + n] for i in range(max(1, len(t) - n + 1)))) if t else []
    return _minhash(texts, num_perm, seed, ngram, shingles=chars)


def minhash_empty_text_gives_zeros(texts, num_perm=128, seed=1, ngram=3):
    return _minhash(texts, num_perm, seed, ngram, empty=0)


# -- 6.6 lsh_candidate_pairs -------------------------------------------------------------------------------
def lsh_comparing_whole_signatures(signatures, bands, rows):
    values = signatures[:, :bands * rows].tolist()
    return [(i, j) for i in range(len(values)) for j in range(i + 1, len(values)) if values[i] == values[j]]


def lsh_strided_bands(signatures, bands, rows):
    columns = torch.arange(bands * rows).reshape(rows, bands).T.reshape(-1)
    return I.lsh_candidate_pairs(signatures[:, columns], bands, rows)


def lsh_missing_the_last_band(signatures, bands, rows):
    return I.lsh_candidate_pairs(signatures, bands - 1, rows) if bands > 1 else []


def lsh_one_band_of_all_rows(signatures, bands, rows):
    return I.lsh_candidate_pairs(signatures, 1, bands * rows)


# -- 6.7 near_dedup ------------------------------------------------------------------------------------
def _near(texts, threshold, num_perm, bands, rows, seed, ngram, *, only_kept=True, estimate_on="all",
          use_threshold=True):
    signatures = I.minhash_signatures(texts, num_perm, seed, ngram)
    width = bands * rows if estimate_on == "bands" else num_perm
    earlier = {}
    for i, j in I.lsh_candidate_pairs(signatures, bands, rows):
        earlier.setdefault(j, []).append(i)
    keep, removed, duplicates = [], set(), []
    for i in range(len(texts)):
        match = None
        for j in sorted(earlier.get(i, [])):
            if only_kept and j in removed:
                continue
            estimate = (signatures[i, :width] == signatures[j, :width]).double().mean().item()
            if not use_threshold or estimate >= threshold:
                match = (i, j, estimate)
                break
        if match is None:
            keep.append(i)
        else:
            removed.add(i)
            duplicates.append(match)
    return {"keep": keep, "duplicates": duplicates}


def near_dedup_removing_near_copies_of_removed_texts(texts, threshold=0.8, num_perm=128, bands=32, rows=4, seed=1,
                                                     ngram=3):
    return _near(texts, threshold, num_perm, bands, rows, seed, ngram, only_kept=False)


def near_dedup_removing_every_candidate(texts, threshold=0.8, num_perm=128, bands=32, rows=4, seed=1, ngram=3):
    return _near(texts, threshold, num_perm, bands, rows, seed, ngram, use_threshold=False)


def near_dedup_estimating_on_the_banded_values(texts, threshold=0.8, num_perm=128, bands=32, rows=4, seed=1,
                                               ngram=3):
    return _near(texts, threshold, num_perm, bands, rows, seed, ngram, estimate_on="bands")


def near_dedup_ignoring_the_seed(texts, threshold=0.8, num_perm=128, bands=32, rows=4, seed=1, ngram=3):
    return _near(texts, threshold, num_perm, bands, rows, 1, ngram)


# -- 6.8 find_contaminated -----------------------------------------------------------------------------
def contaminated_by_character_substring(train_texts, eval_texts, n=13):
    flagged = []
    for i, text in enumerate(train_texts):
        words = normalize_text(text)
        for other in eval_texts:
            target = normalize_text(other).split()
            grams = [target] if 0 < len(target) < n else [target[j:j + n] for j in range(len(target) - n + 1)]
            if any(" ".join(g) in words for g in grams):
                flagged.append(i)
                break
    return flagged


def contaminated_ignoring_short_eval_texts(train_texts, eval_texts, n=13):
    return I.find_contaminated(train_texts, [t for t in eval_texts if len(t.split()) >= n], n)


def contaminated_without_normalising(train_texts, eval_texts, n=13):
    flagged = []
    for i, text in enumerate(train_texts):
        words = text.split()
        for other in eval_texts:
            target = other.split()
            grams = [target] if 0 < len(target) < n else [target[j:j + n] for j in range(len(target) - n + 1)]
            if any(f" {' '.join(g)} " in f" {' '.join(words)} " for g in grams):
                flagged.append(i)
                break
    return flagged


def contaminated_with_n_plus_one_grams(train_texts, eval_texts, n=13):
    return I.find_contaminated(train_texts, eval_texts, n + 1)


# -- 6.9 grouped_split ---------------------------------------------------------------------------------
def _split_with(groups, test_size, validation_size, permutation, count=math.ceil, order=None):
    names = order or list(dict.fromkeys(groups))
    n_test, n_validation = count(test_size * len(names)), count(validation_size * len(names))
    if n_test + n_validation >= len(names):
        raise ValueError("no training group left")
    part = {names[g]: "test" for g in permutation[:n_test]}
    part.update({names[g]: "validation" for g in permutation[n_test:n_test + n_validation]})
    split = {"train": [], "validation": [], "test": []}
    for row, group in enumerate(groups):
        split[part.get(group, "train")].append(row)
    return split


def grouped_split_unseeded(groups, test_size, validation_size=0.0, seed=0):
    n = len(dict.fromkeys(groups))
    return _split_with(groups, test_size, validation_size, np.random.default_rng().permutation(n).tolist())


def grouped_split_by_row(groups, test_size, validation_size=0.0, seed=0):
    rows = list(range(len(groups)))
    return _split_with(rows, test_size, validation_size, np.random.default_rng(seed).permutation(len(rows)).tolist())


def grouped_split_rounding_down(groups, test_size, validation_size=0.0, seed=0):
    n = len(dict.fromkeys(groups))
    return _split_with(groups, test_size, validation_size, np.random.default_rng(seed).permutation(n).tolist(),
                       count=lambda x: max(1, math.floor(x)) if x else 0)


def grouped_split_of_sorted_groups(groups, test_size, validation_size=0.0, seed=0):
    names = sorted(set(groups), key=str)
    return _split_with(groups, test_size, validation_size,
                       np.random.default_rng(seed).permutation(len(names)).tolist(), order=names)


def grouped_split_with_random_shuffle(groups, test_size, validation_size=0.0, seed=0):
    permutation = list(range(len(dict.fromkeys(groups))))
    random.Random(seed).shuffle(permutation)
    return _split_with(groups, test_size, validation_size, permutation)


# -- 6.10 fill_template --------------------------------------------------------------------------------
def fill_template_by_replace_like_the_seed(template, values, types=None):
    prompt = template
    for name, value in values.items():
        prompt = prompt.replace("{" + name + "}", str(value))
    return prompt


def fill_template_accepting_unknown_values(template, values, types=None):
    slots = set(I.template_slots(template))
    return I.fill_template(template, {k: v for k, v in values.items() if k in slots},
                           {k: v for k, v in (types or {}).items() if k in slots})


def fill_template_with_bool_as_int(template, values, types=None):
    lenient = {k: v for k, v in (types or {}).items() if not isinstance(values.get(k), bool)}  # True passes as int
    unknown = set(types or {}) - set(lenient) - set(I.template_slots(template))
    return I.fill_template(template, values, {**lenient, **{k: types[k] for k in unknown}})


def fill_template_without_type_checks(template, values, types=None):
    return I.fill_template(template, values)


def fill_template_with_format_map(template, values, types=None):
    return template.format_map(values)


# -- 6.11 select_shots ---------------------------------------------------------------------------------
def _shots(lengths, budget, k, seed, scores, *, stop_early=False, most_similar_first=False, strict=False):
    if scores is None:
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    else:
        order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    chosen, used = [], 0
    for i in order:
        if len(chosen) == k:
            break
        fits = used + lengths[i] < budget if strict else used + lengths[i] <= budget
        if fits:
            chosen.append(i)
            used += lengths[i]
        elif stop_early:
            break
    return chosen if scores is None or most_similar_first else chosen[::-1]


def select_shots_stopping_at_the_first_misfit(lengths, budget, k, seed=None, scores=None):
    return _shots(lengths, budget, k, seed, scores, stop_early=True)


def select_shots_most_similar_first(lengths, budget, k, seed=None, scores=None):
    return _shots(lengths, budget, k, seed, scores, most_similar_first=True)


def select_shots_strictly_below_the_budget(lengths, budget, k, seed=None, scores=None):
    return _shots(lengths, budget, k, seed, scores, strict=True)


def select_shots_with_random_sample(lengths, budget, k, seed=None, scores=None):
    if scores is not None:
        return I.select_shots(lengths, budget, k, scores=scores)
    order = random.Random(seed).sample(range(len(lengths)), len(lengths))
    chosen, used = [], 0
    for i in order:
        if len(chosen) < k and used + lengths[i] <= budget:
            chosen.append(i)
            used += lengths[i]
    return chosen


# -- 6.12 few_shot_prompt ------------------------------------------------------------------------------
def _prompt(question, shots, chain_of_thought, *, trailing="", separator="\n\n", trigger=True):
    blocks = []
    for i, shot in enumerate(shots):
        for field in ("question", "answer", "rationale") if chain_of_thought else ("question", "answer"):
            if type(shot.get(field)) is not str:
                raise ValueError(f"shots[{i}]: field {field!r} must be a str")
        answer = (f"Let's think step by step. {shot['rationale']} So the answer is {shot['answer']}."
                  if chain_of_thought else shot["answer"])
        blocks.append(f"Question: {shot['question']}\nAnswer: {answer}")
    cue = " Let's think step by step." if chain_of_thought and trigger else trailing
    return separator.join(blocks + [f"Question: {question}\nAnswer:{cue}"])


def few_shot_prompt_with_a_trailing_space(question, shots=(), chain_of_thought=False):
    return _prompt(question, shots, chain_of_thought, trailing=" ")


def few_shot_prompt_with_single_newlines(question, shots=(), chain_of_thought=False):
    return _prompt(question, shots, chain_of_thought, separator="\n")


def few_shot_prompt_without_the_cot_trigger_on_the_question(question, shots=(), chain_of_thought=False):
    return _prompt(question, shots, chain_of_thought, trigger=False)


def few_shot_prompt_with_shots_reversed(question, shots=(), chain_of_thought=False):
    return _prompt(question, list(shots)[::-1], chain_of_thought)


# -- 6.13 sample_instructions --------------------------------------------------------------------------
def sample_instructions_drawing_each_slot_like_the_seed(records, templates, n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r, t = rng.randrange(len(records)), rng.randrange(len(templates))
        filled = {}
        for field in ("instruction", "output"):
            slots = I.template_slots(templates[t][field])
            filled[field] = templates[t][field].format(**{s: rng.choice(records)[s] for s in slots})
        out.append({**filled, "record": r, "template": t})
    return out


def sample_instructions_with_repeats(records, templates, n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r, t = rng.randrange(len(records)), rng.randrange(len(templates))
        out.append({"instruction": templates[t]["instruction"].format(**records[r]),
                    "output": templates[t]["output"].format(**records[r]), "record": r, "template": t})
    return out


def sample_instructions_template_drawn_first(records, templates, n, seed):
    if n > len(records) * len(templates):
        raise ValueError("n is more than the number of pairs")
    rng = random.Random(seed)
    drawn, out = set(), []
    while len(out) < n:
        t, r = rng.randrange(len(templates)), rng.randrange(len(records))
        if (r, t) not in drawn:
            drawn.add((r, t))
            out.append({"instruction": templates[t]["instruction"].format(**records[r]),
                        "output": templates[t]["output"].format(**records[r]), "record": r, "template": t})
    return out


def sample_instructions_unseeded(records, templates, n, seed):
    return I.sample_instructions(records, templates, n, random.randrange(1 << 30))


MUTANTS = {
    "alpaca_to_messages": [alpaca_input_joined_with_one_newline, alpaca_system_argument_overrides_the_record,
                           alpaca_lowercased_like_the_seed, alpaca_without_checks,
                           alpaca_errors_without_the_record_index],
    "messages_to_alpaca": [messages_to_alpaca_taking_the_first_two_turns, messages_to_alpaca_splitting_off_the_input,
                           messages_to_alpaca_without_role_checks],
    "render_chat": [render_chat_mask_covering_the_prompt, render_chat_mask_with_the_assistant_header,
                    render_chat_mask_without_im_end, render_chat_mask_of_the_last_assistant_turn_only,
                    render_chat_generation_prompt_appended_twice, render_chat_mask_with_the_newline],
    "exact_dedup": [exact_dedup_normalising_the_callers_texts, exact_dedup_of_raw_text, exact_dedup_keeping_the_last, exact_dedup_lowercase_only],
    "minhash_signatures": [minhash_max_instead_of_min, minhash_of_sha1_without_mixing, minhash_of_character_shingles,
                           minhash_empty_text_gives_zeros],
    "lsh_candidate_pairs": [lsh_comparing_whole_signatures, lsh_strided_bands, lsh_missing_the_last_band,
                            lsh_one_band_of_all_rows],
    "near_dedup": [near_dedup_normalising_the_callers_texts, near_dedup_removing_near_copies_of_removed_texts, near_dedup_removing_every_candidate,
                   near_dedup_estimating_on_the_banded_values, near_dedup_ignoring_the_seed],
    "find_contaminated": [contaminated_normalising_the_callers_texts, contaminated_by_character_substring, contaminated_ignoring_short_eval_texts,
                          contaminated_without_normalising, contaminated_with_n_plus_one_grams],
    "grouped_split": [grouped_split_numbering_the_callers_groups, grouped_split_unseeded, grouped_split_by_row, grouped_split_rounding_down,
                      grouped_split_of_sorted_groups, grouped_split_with_random_shuffle],
    "fill_template": [fill_template_by_replace_like_the_seed, fill_template_accepting_unknown_values,
                      fill_template_with_bool_as_int, fill_template_without_type_checks, fill_template_with_format_map],
    "select_shots": [select_shots_stopping_at_the_first_misfit, select_shots_most_similar_first,
                     select_shots_strictly_below_the_budget, select_shots_with_random_sample],
    "few_shot_prompt": [few_shot_prompt_with_a_trailing_space, few_shot_prompt_with_single_newlines,
                        few_shot_prompt_without_the_cot_trigger_on_the_question, few_shot_prompt_with_shots_reversed],
    "sample_instructions": [sample_instructions_drawing_each_slot_like_the_seed, sample_instructions_with_repeats,
                            sample_instructions_template_drawn_first, sample_instructions_unseeded],
}
