"""Chapter 6 graded tests (public): record formats, the chat template with its assistant mask, exact
and near-duplicate removal, decontamination, grouped splits, prompt templates, few-shot prompts and
instructions generated from records.

The references are outside the course: ``transformers``' ``apply_chat_template`` (with
``return_assistant_tokens_mask``) on a tokenizer trained here with ``tokenizers`` and carrying the
course's Jinja template; ``datasketch``'s ``MinHash`` and ``MinHashLSH``; the exact Jaccard
similarity of every pair; ``datasets.Dataset.train_test_split``; Python's ``str.format`` and
``string.Formatter``; ``torch.randperm`` and ``torch.topk``; and hand-written expected values. The
tests of one exercise do not call another exercise, so a mistake is charged once (6.7 is about the
whole pipeline and calls 6.5 and 6.6 through your code).

Not graded (at the end): the course's chat tokenizer passes TRL's checks, and the course instruction
data set is deterministic, split by item, cleaned as its data card says, and checkable.

Each exercise's contract (its docstring), clause by clause, with the public tests that check it
(``test_`` dropped):

6.1 ``alpaca_to_messages``
  - user turn = instruction, or instruction + blank line + input unless the input is missing or blank:
    alpaca_to_messages_puts_instruction_and_input_in_the_user_turn
  - the record's own non-empty system prompt wins over ``system``; none without either:
    alpaca_to_messages_system_prompt_of_the_record_wins_over_the_argument
  - texts copied unchanged, records not modified: alpaca_to_messages_copies_texts_unchanged_and_leaves_records_alone
  - a malformed record or field refused naming both; a non-dict record refused:
    alpaca_to_messages_rejects_a_malformed_record_naming_it_and_the_field, alpaca_to_messages_rejects_a_record_that_is_not_a_dict
  - what it makes renders with the chat template: alpaca_to_messages_renders_with_the_chat_template

6.2 ``messages_to_alpaca``
  - instruction = the user turn, ``input`` empty, output, system when present:
    messages_to_alpaca_gives_instruction_input_and_output
  - conversations not modified: messages_to_alpaca_leaves_conversations_alone
  - every malformed conversation refused naming the record, the message and the field:
    messages_to_alpaca_rejects_a_malformed_conversation_naming_record_and_field

6.3 ``render_chat``
  - text, ids and assistant mask equal ``apply_chat_template`` (fixed and random conversations):
    render_chat_matches_transformers_apply_chat_template, render_chat_random_conversations_match_transformers
  - multi-turn: exactly the assistant turns (and their ``<|im_end|>``) masked:
    render_chat_masks_exactly_the_assistant_turns_in_a_multi_turn_chat
  - the generation prompt appended once and not in the mask: render_chat_generation_prompt_is_appended_once_and_not_trained
  - messages not modified; plain lists of Python ints: render_chat_leaves_the_messages_alone_and_returns_plain_lists

6.4 ``exact_dedup``
  - the first of each normalised text (case, whitespace, NFKC), increasing; ``[]`` for no texts:
    exact_dedup_keeps_the_first_of_each_normalised_text, exact_dedup_agrees_with_a_set_of_hashes
  - texts not modified: exact_dedup_leaves_the_texts_alone

6.5 ``minhash_signatures``
  - every row equals ``datasketch.MinHash`` (any num_perm, seed, ngram), int64 ``(n, num_perm)``:
    minhash_signatures_equal_datasketch
  - a text without shingles is all ``2**32 - 1``: minhash_signature_of_an_empty_text_is_all_maximal
  - the estimate of every pair's Jaccard within the bound: minhash_estimates_every_pairs_jaccard_within_the_bound
  - texts not modified: minhash_signatures_leave_the_texts_alone

6.6 ``lsh_candidate_pairs``
  - the pairs ``datasketch.MinHashLSH(params=(bands, rows))`` finds: lsh_candidate_pairs_equal_datasketch_minhash_lsh
  - one equal band suffices, equal values in different bands do not:
    lsh_a_single_equal_band_makes_a_candidate_and_scattered_equal_values_do_not
  - columns beyond ``bands * rows`` unused; each pair once, ``i < j``, sorted:
    lsh_ignores_columns_beyond_the_bands_and_lists_each_pair_once

6.7 ``near_dedup``
  - a streaming LSH index of the kept texts (datasketch): near_dedup_matches_datasketch_streaming_dedup
  - the estimate against the threshold, duplicates as ``(i, j, float)``:
    near_dedup_removes_what_the_exact_jaccard_calls_duplicates
  - only kept texts remove others: near_dedup_only_kept_texts_remove_others
  - texts not modified: near_dedup_leaves_the_texts_alone

6.8 ``find_contaminated``
  - any ``n``-gram of an evaluation text, as brute force finds it: find_contaminated_agrees_with_brute_force_containment
  - short evaluation texts count whole; words compared whole; no evaluation texts, none contaminated:
    find_contaminated_counts_short_evaluation_texts_whole_and_words_whole
  - ``n`` defaults to 13: find_contaminated_default_is_gpt3_thirteen_grams
  - texts not modified: find_contaminated_leaves_the_texts_alone

6.9 ``grouped_split``
  - one row per group: ``datasets.Dataset.train_test_split``: grouped_split_of_single_row_groups_is_datasets_train_test_split
  - groups kept together (where a row split leaks): grouped_split_keeps_groups_together_where_a_row_split_leaks
  - groups numbered by first appearance, test then validation from the permutation:
    grouped_split_draws_groups_in_order_of_first_appearance
  - seeded: grouped_split_is_seeded
  - no training group: ValueError: grouped_split_refuses_to_leave_no_training_group
  - groups not modified: grouped_split_leaves_the_groups_alone

6.10 ``fill_template``
  - ``str.format`` of the slots, braces, repeated slots; values not modified: fill_template_equals_str_format
  - a missing slot, a value without a slot, a wrong declared type (bool never a number), a malformed template
    refused: fill_template_fails_on_a_missing_slot_instead_of_leaving_it, fill_template_fails_on_a_value_without_a_slot,
    fill_template_checks_the_declared_types, fill_template_rejects_a_malformed_template

6.11 ``select_shots``
  - random: the order of ``torch.randperm`` with the seed: select_shots_random_follows_torch_randperm
  - nearest: most similar last, ties to the lower index: select_shots_nearest_puts_the_most_similar_last
  - a shot that does not fit is skipped and the next tried; at most ``k``:
    select_shots_skips_what_does_not_fit_and_goes_on
  - nothing fits, ``k`` 0, an empty pool, ``k`` above the pool, empty shots in a zero budget: select_shots_edge_cases

6.12 ``few_shot_prompt``
  - zero-shot: ``"Question: ...\nAnswer:"`` with no trailing space: few_shot_prompt_zero_shot
  - shots first, in order, blank lines between blocks: few_shot_prompt_puts_shots_first_in_order
  - chain of thought: the rationale before "So the answer is": few_shot_prompt_chain_of_thought
  - an incomplete shot refused naming it: few_shot_prompt_rejects_an_incomplete_shot_naming_it

6.13 ``sample_instructions``
  - distinct (record, template) pairs drawn in the seeded order: sample_instructions_draws_distinct_pairs_in_the_seeded_order
  - question and answer filled from one record: sample_instructions_fills_question_and_answer_from_one_record
  - more pairs than exist, or a slot the record lacks, refused naming them: sample_instructions_refuses_impossible_requests
  - seeded, inputs not modified: sample_instructions_is_seeded_and_leaves_inputs_alone
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import math
import random
import re

import numpy as np
import pytest
import torch

from course_lib.instruct import CHAT_TEMPLATE
from course_lib.instruction_data import jaccard, normalize_text, word_shingles

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


# -- references and test data ------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def hf_chat_tokenizer():
    """A byte-level BPE tokenizer trained here by ``tokenizers`` (GPT-2's pre-tokenizer, the course's
    special tokens), as a ``transformers`` tokenizer with the course's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    texts = ["What is 37 plus 45? The answer is 82.", "Sort these numbers in ascending order: 3, 17, 42.",
             "You are a helpful assistant. Answer briefly.", "Reverse the word parser: resrap.",
             "user assistant system\n\nhello world, the quick brown fox jumps over the lazy dog"] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   chat_template=CHAT_TEMPLATE)


def hf_render(messages, add_generation_prompt=False) -> dict:
    """``apply_chat_template`` of the Hugging Face tokenizer: text, ids and assistant mask."""
    tokenizer = hf_chat_tokenizer()
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, return_dict=True,
                                        return_assistant_tokens_mask=True)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    return {"text": text, "input_ids": list(out["input_ids"]), "assistant_masks": list(out["assistant_masks"])}


def tokenizer_json() -> str:
    return hf_chat_tokenizer().backend_tokenizer.to_str()


def conversation(*turns, system=None):
    """Messages from alternating user/assistant contents, with an optional system message first."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": ("user", "assistant")[i % 2], "content": c} for i, c in enumerate(turns)]


def random_conversation(rng: random.Random) -> list[dict]:
    pieces = ["Hello", " world", "\n", "\n\n", " ", "42", "é", "a\nb", "  x  ", "日本", "Sort: 3, 1", "\t", "<|endoftext|>"]
    turns = ["".join(rng.choices(pieces, k=rng.randint(0, 4))) for _ in range(rng.randint(1, 6))]
    system = "".join(rng.choices(pieces, k=rng.randint(0, 3))) if rng.random() < 0.3 else None
    return conversation(*turns, system=system)


def datasketch_minhash(text, num_perm=128, seed=1, ngram=3):
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed)
    m.update_batch([s.encode("utf-8") for s in word_shingles(text, ngram)])
    return m


def datasketch_pairs(signatures: torch.Tensor, bands: int, rows: int, seed: int = 1) -> list[tuple[int, int]]:
    """Candidate pairs of ``datasketch.MinHashLSH`` with the banding ``(bands, rows)`` on these signatures."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=signatures.shape[1], params=(bands, rows))
    hashes = [MinHash(seed=seed, hashvalues=row.numpy().astype(np.uint32), scheme="affine32") for row in signatures]
    for i, m in enumerate(hashes):
        lsh.insert(i, m)
    return sorted({(min(i, j), max(i, j)) for i, m in enumerate(hashes) for j in lsh.query(m) if j != i})


def datasketch_dedup(texts, threshold, num_perm, bands, rows, seed, ngram):
    """Streaming near-duplicate removal with datasketch: query the LSH index of the kept texts, keep the
    text (and insert it) unless a candidate's estimated Jaccard similarity reaches the threshold."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
    hashes, keep, duplicates = [], [], []
    for i, text in enumerate(texts):
        m = datasketch_minhash(text, num_perm, seed, ngram)
        hashes.append(m)
        close = sorted(j for j in lsh.query(m) if m.jaccard(hashes[j]) >= threshold)
        if close:
            duplicates.append((i, close[0], m.jaccard(hashes[close[0]])))
        else:
            lsh.insert(i, m)
            keep.append(i)
    return {"keep": keep, "duplicates": duplicates}


def paraphrase_texts(seed: int, n_items: int = 12) -> list[str]:
    """Short instruction-like texts: items in several phrasings, some repeated exactly, shuffled."""
    rng = random.Random(seed)
    frames = ["please sort the following list of numbers in ascending order and show the result {x}",
              "sort the following list of numbers in ascending order and show the result {x} now",
              "kindly sort the following list of numbers in ascending order and show the result {x}",
              "what is the capital of {x} and how many people live there today"]
    items = [", ".join(str(rng.randrange(100)) for _ in range(4)) for _ in range(n_items)]
    texts = [f.format(x=x) for x in items for f in rng.sample(frames, 2)]
    texts += rng.sample(texts, 4)
    rng.shuffle(texts)
    return texts


def datasets_test_rows(n, test_size, seed):
    from datasets import Dataset

    split = Dataset.from_dict({"row": list(range(n))}).train_test_split(test_size=test_size, seed=seed)
    return sorted(split["train"]["row"]), sorted(split["test"]["row"])


def word_contained(needle_words, haystack_words) -> bool:
    """Whether the words occur consecutively in the other words (compared as space-padded strings)."""
    return f" {' '.join(needle_words)} " in f" {' '.join(haystack_words)} "


def brute_force_contaminated(train, evaluation, n):
    flagged = []
    for i, text in enumerate(train):
        words = normalize_text(text).split()
        for other in evaluation:
            target = normalize_text(other).split()
            grams = [target] if 0 < len(target) < n else [target[j:j + n] for j in range(len(target) - n + 1)]
            if any(word_contained(g, words) for g in grams):
                flagged.append(i)
                break
    return flagged


def assert_raises_naming(error, call, *names):
    """``call()`` raises ``error`` with every string of ``names`` in its message."""
    __tracebackhide__ = True
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    missing = [n for n in names if n not in message]
    assert not missing, f"the error should name {missing}; it says: {message!r}"


# -- 6.1 alpaca_to_messages ---------------------------------------------------------------------------
@pytest.mark.exercise("6.1")
def test_alpaca_to_messages_puts_instruction_and_input_in_the_user_turn(student):
    records = [{"instruction": "Sort these numbers.", "input": "3, 1, 2", "output": "1, 2, 3"},
               {"instruction": "What is 2 plus 3?", "output": "5"},
               {"instruction": "Reverse the word.", "input": "  \n", "output": "drow"}]
    got = student.alpaca_to_messages(records)
    assert got == [conversation("Sort these numbers.\n\n3, 1, 2", "1, 2, 3"),
                   conversation("What is 2 plus 3?", "5"),
                   conversation("Reverse the word.", "drow")], \
        "the user turn is the instruction, then a blank line and the input (a missing or blank input adds nothing)"


@pytest.mark.exercise("6.1")
def test_alpaca_to_messages_system_prompt_of_the_record_wins_over_the_argument(student):
    records = [{"instruction": "Hi.", "output": "Hello.", "system": "Be formal."},
               {"instruction": "Hi.", "output": "Hello.", "system": ""},
               {"instruction": "Hi.", "output": "Hello."}]
    assert student.alpaca_to_messages(records, system="Be brief.") == [
        conversation("Hi.", "Hello.", system="Be formal."), conversation("Hi.", "Hello.", system="Be brief."),
        conversation("Hi.", "Hello.", system="Be brief.")]
    assert student.alpaca_to_messages(records[1:]) == [conversation("Hi.", "Hello.")] * 2, \
        "no system message without a system prompt"


@pytest.mark.exercise("6.1")
def test_alpaca_to_messages_copies_texts_unchanged_and_leaves_records_alone(student):
    records = [{"instruction": "  Write \"Parser\" in CAPITALS. ", "input": "Parser\n", "output": " PARSER\n"}]
    before = copy.deepcopy(records)
    got = student.alpaca_to_messages(records)
    assert got == [conversation("  Write \"Parser\" in CAPITALS. \n\nParser\n", " PARSER\n")], \
        "texts are copied as they are: no stripping and no lower-casing (an answer may need its capitals)"
    assert records == before, "the records were modified"
    assert student.alpaca_to_messages([]) == []


@pytest.mark.exercise("6.1")
@pytest.mark.parametrize("bad, field", [
    ({"instruction": "Hi.", "input": ""}, "output"),
    ({"input": "x", "output": "y"}, "instruction"),
    ({"instruction": "Hi.", "ouput": "Hello."}, "ouput"),
    ({"instruction": "Hi.", "output": 5}, "output"),
    ({"instruction": "Hi.", "output": "Hello.", "input": None}, "input"),
    ({"instruction": "   ", "output": "Hello."}, "instruction"),
    ({"instruction": "Hi.", "output": ""}, "output"),
    ({"instruction": "Hi.", "output": "Hello.", "system": ["x"]}, "system"),
])
def test_alpaca_to_messages_rejects_a_malformed_record_naming_it_and_the_field(student, bad, field):
    records = [{"instruction": "Fine.", "output": "Yes."}, {"instruction": "Also fine.", "output": "Yes."}, bad]
    assert_raises_naming(ValueError, lambda: student.alpaca_to_messages(records), "record 2", field)


@pytest.mark.exercise("6.1")
def test_alpaca_to_messages_rejects_a_record_that_is_not_a_dict(student):
    assert_raises_naming(ValueError, lambda: student.alpaca_to_messages([{"instruction": "a", "output": "b"},
                                                                         "instruction: a"]), "record 1")


@pytest.mark.exercise("6.1")
def test_alpaca_to_messages_renders_with_the_chat_template(student):
    """What a conversion gives must be a conversation the chat template takes (transformers renders it)."""
    messages = student.alpaca_to_messages([{"instruction": "Sort.", "input": "2, 1", "output": "1, 2"}],
                                          system="Be brief.")[0]
    assert hf_render(messages)["text"] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSort.\n\n2, 1"
                                           "<|im_end|>\n<|im_start|>assistant\n1, 2<|im_end|>\n")


# -- 6.2 messages_to_alpaca ---------------------------------------------------------------------------
@pytest.mark.exercise("6.2")
def test_messages_to_alpaca_gives_instruction_input_and_output(student):
    conversations = [conversation("What is 2 plus 3?", "5"),
                     conversation("Sort.\n\n2, 1", " 1, 2\n", system="Be brief.")]
    assert student.messages_to_alpaca(conversations) == [
        {"instruction": "What is 2 plus 3?", "input": "", "output": "5"},
        {"instruction": "Sort.\n\n2, 1", "input": "", "output": " 1, 2\n", "system": "Be brief."}], \
        "the whole user turn is the instruction, input is '', a system message becomes the 'system' field"


@pytest.mark.exercise("6.2")
def test_messages_to_alpaca_leaves_conversations_alone(student):
    conversations = [conversation("Hi.", "Hello.", system="S.")]
    before = copy.deepcopy(conversations)
    student.messages_to_alpaca(conversations)
    assert conversations == before
    assert student.messages_to_alpaca([]) == []


@pytest.mark.exercise("6.2")
@pytest.mark.parametrize("bad, names", [
    (conversation("Hi.", "Hello.", "And?", "More."), ["record 1"]),
    (conversation("Hi."), ["record 1"]),
    (conversation("Hi.", "Hello.", "And?"), ["record 1"]),
    ([{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi."}], ["record 1", "messages[0]", "role"]),
    ([{"role": "user", "content": "Hi."}, {"role": "system", "content": "S."}], ["record 1", "messages[1]", "role"]),
    ([{"role": "user", "content": "Hi."}, {"role": "bot", "content": "Hello."}], ["record 1", "messages[1]", "role"]),
    ([{"role": "user", "content": "Hi."}, {"role": "assistant", "content": 5}], ["record 1", "messages[1]", "content"]),
    ([{"role": "user", "content": "Hi."}, {"role": "assistant", "text": "Hello."}], ["record 1", "messages[1]"]),
    ([{"role": "user", "content": "Hi."}, {"role": "assistant", "content": " "}], ["record 1", "messages[1]", "content"]),
    ([{"role": "system", "content": "S."}, {"role": "user", "content": ""}, {"role": "assistant", "content": "x"}],
     ["record 1", "messages[1]", "content"]),
    ("Hi. Hello.", ["record 1"]),
])
def test_messages_to_alpaca_rejects_a_malformed_conversation_naming_record_and_field(student, bad, names):
    conversations = [conversation("Fine.", "Yes."), bad]
    assert_raises_naming(ValueError, lambda: student.messages_to_alpaca(conversations), *names)


# -- 6.3 render_chat ----------------------------------------------------------------------------------
CHATS = [
    (conversation("What is 2 plus 3?", "5"), False),
    (conversation("What is 2 plus 3?", "5", system="Answer briefly."), False),
    (conversation("What is 2 plus 3?", system="Answer briefly."), True),
    (conversation("Sort: 3, 1", "1, 3", "And descending?", "3, 1", "Thanks."), True),
    (conversation("Hi", " Hello there.\n\n", "  ", "\nok"), False),
]


@pytest.mark.exercise("6.3")
@pytest.mark.parametrize("messages, add_generation_prompt", CHATS)
def test_render_chat_matches_transformers_apply_chat_template(student, messages, add_generation_prompt):
    got = student.render_chat(tokenizer_json(), messages, add_generation_prompt)
    expected = hf_render(messages, add_generation_prompt)
    assert set(got) == {"text", "input_ids", "assistant_masks"}, f"keys {sorted(got)}"
    assert got["text"] == expected["text"], \
        f"the rendered text differs from the chat template's:\n{got['text']!r}\n{expected['text']!r}"
    assert got["input_ids"] == expected["input_ids"], "the token ids differ from the tokenizer's ids of the whole text"
    assert got["assistant_masks"] == expected["assistant_masks"], (
        "the assistant mask differs from return_assistant_tokens_mask: it covers each assistant turn's content and "
        "its <|im_end|>, nothing of the prompt (headers, user and system turns, the generation prompt)")


@pytest.mark.exercise("6.3")
def test_render_chat_masks_exactly_the_assistant_turns_in_a_multi_turn_chat(student):
    tokenizer = hf_chat_tokenizer()
    messages = conversation("Sort: 3, 1", "1, 3", "And descending?", "3, 1", system="Be brief.")
    got = student.render_chat(tokenizer_json(), messages)
    masked = [i for i, m in zip(got["input_ids"], got["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == "1, 3<|im_end|>3, 1<|im_end|>", (
        f"the masked tokens read {tokenizer.decode(masked)!r}: they must be what the assistant writes in every "
        "assistant turn, its content and <|im_end|>, and nothing else")
    assert len(got["assistant_masks"]) == len(got["input_ids"]) and set(got["assistant_masks"]) == {0, 1}


@pytest.mark.exercise("6.3")
def test_render_chat_generation_prompt_is_appended_once_and_not_trained(student):
    messages = conversation("What is 2 plus 3?")
    with_prompt = student.render_chat(tokenizer_json(), messages, True)
    without = student.render_chat(tokenizer_json(), messages, False)
    assert without["text"] == "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n"
    assert with_prompt["text"] == without["text"] + "<|im_start|>assistant\n", \
        "add_generation_prompt appends '<|im_start|>assistant\\n' once, after the last message"
    assert sum(with_prompt["assistant_masks"]) == 0, "the generation prompt is the model's cue, not a trained target"


@pytest.mark.exercise("6.3")
def test_render_chat_random_conversations_match_transformers(student):
    rng = random.Random(0)
    for _ in range(25):
        messages = random_conversation(rng)
        add = rng.random() < 0.5
        got, expected = student.render_chat(tokenizer_json(), messages, add), hf_render(messages, add)
        assert got == expected, f"render_chat({messages!r}, add_generation_prompt={add}) differs from transformers"


@pytest.mark.exercise("6.3")
def test_render_chat_leaves_the_messages_alone_and_returns_plain_lists(student):
    messages = conversation("Hi.", "Hello.", system="S.")
    before = copy.deepcopy(messages)
    got = student.render_chat(tokenizer_json(), messages)
    assert messages == before
    assert type(got["input_ids"]) is list and all(type(i) is int for i in got["input_ids"])
    assert type(got["assistant_masks"]) is list and all(m in (0, 1) for m in got["assistant_masks"])


# -- 6.4 exact_dedup ----------------------------------------------------------------------------------
@pytest.mark.exercise("6.4")
def test_exact_dedup_keeps_the_first_of_each_normalised_text(student):
    texts = ["Sort these.", "sort  these.", "SORT THESE.\n", "Sort these!", "ﬁle", "file", "Straße", "STRASSE", " a\tb "]
    assert student.exact_dedup(texts) == [0, 3, 4, 6, 8], \
        "duplicates differ only in case (casefold), whitespace runs or Unicode compatibility forms (NFKC)"


@pytest.mark.exercise("6.4")
def test_exact_dedup_agrees_with_a_set_of_hashes(student):
    rng = random.Random(1)
    base = ["What is 37 plus 45?", "Reverse the word parser.", "Sort: 3, 1, 2", "Hello, World", ""]
    variants = [lambda s: s, str.upper, lambda s: f"  {s} ", lambda s: s.replace(" ", "\n "), lambda s: s + "."]
    texts = [rng.choice(variants)(rng.choice(base)) for _ in range(60)]
    seen, expected = set(), []
    for i, text in enumerate(texts):
        digest = hashlib.md5(normalize_text(text).encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            expected.append(i)
    assert student.exact_dedup(texts) == expected
    assert student.exact_dedup([]) == []


# -- 6.5 minhash_signatures ---------------------------------------------------------------------------
MINHASH_TEXTS = ["What is 37 plus 45?", "what is 37  PLUS 45 ?", "Sort these numbers in ascending order: 3, 1, 2",
                 "the quick brown fox jumps over the lazy dog", "the quick brown fox jumped over a lazy dog",
                 "one", "two words", "日本語 の テキスト です"]


@pytest.mark.exercise("6.4")
def test_exact_dedup_leaves_the_texts_alone(student):
    texts = ["Sort these.", "sort  these.", " A\tb "]
    before = list(texts)
    student.exact_dedup(texts)
    assert texts == before, f"exact_dedup changed the caller's texts to {texts}: compare normalised copies"


@pytest.mark.exercise("6.5")
@pytest.mark.parametrize("num_perm, seed, ngram", [(128, 1, 3), (64, 7, 2), (16, 0, 1)])
def test_minhash_signatures_equal_datasketch(student, num_perm, seed, ngram):
    got = student.minhash_signatures(MINHASH_TEXTS, num_perm=num_perm, seed=seed, ngram=ngram)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64, "a tensor of int64"
    assert got.shape == (len(MINHASH_TEXTS), num_perm), f"shape {tuple(got.shape)}"
    for row, text in zip(got, MINHASH_TEXTS):
        expected = torch.from_numpy(datasketch_minhash(text, num_perm, seed, ngram).hashvalues.astype(np.int64))
        assert torch.equal(row, expected), (
            f"signature of {text!r} differs from datasketch.MinHash(num_perm={num_perm}, seed={seed}) at "
            f"{int((row != expected).sum())} of {num_perm} positions: the minimum over the shingles of "
            "(a * shingle_hash + b) mod 2**32, with (a, b) = minhash_permutations(num_perm, seed)?")


@pytest.mark.exercise("6.5")
def test_minhash_signature_of_an_empty_text_is_all_maximal(student):
    got = student.minhash_signatures(["", "   \n", "word"], num_perm=8)
    assert torch.equal(got[:2], torch.full((2, 8), 2**32 - 1)), "no shingles: every value stays 2**32 - 1"
    assert torch.equal(got[2], torch.from_numpy(datasketch_minhash("word", 8).hashvalues.astype(np.int64)))


@pytest.mark.exercise("6.5")
def test_minhash_estimates_every_pairs_jaccard_within_the_bound(student):
    """On every pair of a small set, the share of equal signature values is within 4 standard deviations
    (sqrt(J(1-J)/num_perm), at most 1/(2 sqrt(num_perm))) of the exact Jaccard similarity."""
    texts = paraphrase_texts(seed=2, n_items=5)
    num_perm = 256
    signatures = student.minhash_signatures(texts, num_perm=num_perm, seed=5)
    worst = 0.0
    for i, j in itertools.combinations(range(len(texts)), 2):
        exact = jaccard(word_shingles(texts[i], 3), word_shingles(texts[j], 3))
        estimate = (signatures[i] == signatures[j]).double().mean().item()
        worst = max(worst, abs(estimate - exact))
        assert abs(estimate - exact) <= 4 * 0.5 / math.sqrt(num_perm), \
            f"texts {i} and {j}: estimate {estimate:.3f}, exact Jaccard {exact:.3f}"
    assert worst > 0, "the estimates are exact for every pair: the signatures cannot be MinHash values"


@pytest.mark.exercise("6.5")
def test_minhash_signatures_leave_the_texts_alone(student):
    texts = list(MINHASH_TEXTS)
    student.minhash_signatures(texts, num_perm=4)
    assert texts == MINHASH_TEXTS
    assert student.minhash_signatures([], num_perm=4).shape == (0, 4)


# -- 6.6 lsh_candidate_pairs --------------------------------------------------------------------------
def reference_signatures(texts, num_perm=128, seed=1, ngram=3) -> torch.Tensor:
    return torch.stack([torch.from_numpy(datasketch_minhash(t, num_perm, seed, ngram).hashvalues.astype(np.int64))
                        for t in texts])


@pytest.mark.exercise("6.6")
@pytest.mark.parametrize("bands, rows", [(32, 4), (16, 8), (20, 5), (8, 2)])
def test_lsh_candidate_pairs_equal_datasketch_minhash_lsh(student, bands, rows):
    signatures = reference_signatures(paraphrase_texts(seed=3))
    got = student.lsh_candidate_pairs(signatures, bands, rows)
    expected = datasketch_pairs(signatures, bands, rows)
    assert expected, "the test data should have candidate pairs"
    assert [tuple(p) for p in got] == expected, (
        f"{len(got)} pairs, datasketch finds {len(expected)} with params=({bands}, {rows}): two texts are a "
        "candidate pair when one band (rows consecutive values) is equal in full")


@pytest.mark.exercise("6.6")
def test_lsh_a_single_equal_band_makes_a_candidate_and_scattered_equal_values_do_not(student):
    gen = torch.Generator().manual_seed(0)
    signatures = torch.randint(0, 2**32, (4, 12), generator=gen)
    signatures[1, 4:8] = signatures[0, 4:8]               # rows 0 and 1: band 1 equal, the rest differs
    signatures[2, ::2] = signatures[3, ::2]               # rows 2 and 3: half the values equal, no band whole
    signatures[3, 8:12] = signatures[0, 8:12] + 1
    assert [tuple(p) for p in student.lsh_candidate_pairs(signatures, 3, 4)] == [(0, 1)], \
        "band j is columns j*rows .. (j+1)*rows - 1; one band equal in full is enough, scattered equal values are not"


@pytest.mark.exercise("6.6")
def test_lsh_ignores_columns_beyond_the_bands_and_lists_each_pair_once(student):
    signatures = torch.arange(30, dtype=torch.int64).reshape(3, 10)
    signatures[:, :6] = 7                                  # all three agree on bands 0-2 (rows 2)
    assert [tuple(p) for p in student.lsh_candidate_pairs(signatures, 3, 2)] == [(0, 1), (0, 2), (1, 2)]
    signatures[:, :6] = torch.arange(18).reshape(3, 6)
    signatures[:, 6:] = 9                                  # equal only in columns that no band uses
    assert student.lsh_candidate_pairs(signatures, 3, 2) == []


# -- 6.7 near_dedup -----------------------------------------------------------------------------------
@pytest.mark.exercise("6.7")
@pytest.mark.parametrize("threshold, num_perm, bands, rows, seed, ngram", [
    (0.8, 128, 32, 4, 1, 3), (0.5, 64, 16, 4, 3, 2), (0.6, 128, 20, 5, 9, 3)])
def test_near_dedup_matches_datasketch_streaming_dedup(student, threshold, num_perm, bands, rows, seed, ngram):
    texts = paraphrase_texts(seed=4)
    got = student.near_dedup(texts, threshold=threshold, num_perm=num_perm, bands=bands, rows=rows, seed=seed,
                             ngram=ngram)
    expected = datasketch_dedup(texts, threshold, num_perm, bands, rows, seed, ngram)
    assert got["keep"] == expected["keep"], (
        f"kept {got['keep']}, datasketch keeps {expected['keep']}: a text is removed when a candidate among the "
        "*kept* earlier texts has estimated Jaccard similarity >= threshold")
    assert [tuple(d) for d in got["duplicates"]] == expected["duplicates"], \
        "duplicates: (removed i, smallest kept j that removed it, estimate = share of equal signature values)"
    assert len(got["keep"]) < len(texts), "the test data holds duplicates"


@pytest.mark.exercise("6.7")
def test_near_dedup_removes_what_the_exact_jaccard_calls_duplicates(student):
    texts = paraphrase_texts(seed=5, n_items=6)
    got = student.near_dedup(texts, threshold=0.7, num_perm=256, bands=64, rows=4)
    kept = set(got["keep"])
    for i, j in itertools.combinations(range(len(texts)), 2):
        exact = jaccard(word_shingles(texts[i], 3), word_shingles(texts[j], 3))
        if exact >= 0.95:
            assert j not in kept, f"text {j} is a copy of text {i} (Jaccard {exact:.2f}) and was kept"
    for i in kept:
        for j in kept:
            if i < j:
                exact = jaccard(word_shingles(texts[i], 3), word_shingles(texts[j], 3))
                assert exact < 0.85, f"texts {i} and {j} are both kept with Jaccard {exact:.2f}"
    assert got["keep"] == sorted(got["keep"]) and got["keep"][0] == 0, "the first occurrence is the one kept"


@pytest.mark.exercise("6.7")
def test_near_dedup_only_kept_texts_remove_others(student):
    """A chain: B is a near copy of A, C of B but not of A. B goes (A was kept); C stays, because the text
    it resembles was removed."""
    words = [f"w{i}" for i in range(14)]
    a, b, c = " ".join(words[:10]), " ".join(words[2:12]), " ".join(words[4:14])
    got = student.near_dedup([a, b, c], threshold=0.6, num_perm=256, bands=64, rows=4, ngram=1)
    assert got["keep"] == [0, 2], f"kept {got['keep']}: C is close to B (removed), not to A (kept)"
    assert [d[:2] for d in got["duplicates"]] == [(1, 0)]
    assert isinstance(got["duplicates"][0][2], float)


# -- 6.8 find_contaminated ----------------------------------------------------------------------------
@pytest.mark.exercise("6.7")
def test_near_dedup_leaves_the_texts_alone(student):
    texts = ["What is 37 plus 45?", "what is 37 plus  45?", "Reverse the word parser."]
    before = list(texts)
    student.near_dedup(texts, threshold=0.5, num_perm=64, bands=16, rows=4)
    assert texts == before, f"near_dedup changed the caller's texts to {texts}"


@pytest.mark.exercise("6.8")
def test_find_contaminated_agrees_with_brute_force_containment(student):
    rng = random.Random(6)
    vocab = ["the", "sum", "of", "37", "and", "45", "is", "82", "sort", "list", "what", "+", "?"]
    evaluation = [" ".join(rng.choices(vocab, k=rng.randint(1, 9))) for _ in range(12)]
    train = [" ".join(rng.choices(vocab, k=rng.randint(3, 20))) for _ in range(60)]
    train += [f"Intro. {e.upper()} outro" for e in evaluation[:3]]
    for n in (3, 5, 13):
        got = student.find_contaminated(train, evaluation, n=n)
        assert got == brute_force_contaminated(train, evaluation, n), f"n={n}"


@pytest.mark.exercise("6.8")
def test_find_contaminated_counts_short_evaluation_texts_whole_and_words_whole(student):
    evaluation = ["What is 37 + 4?", "a much longer evaluation question that has more than eight words in it",
                  "the sum of 37 and 4"]
    train = ["Q: what is 37 + 4? A: 41",           # the short question, whole, case-folded
             "What is 37 + 45? and 82",            # not the same words: 45? is not 4?
             "that has more than eight words in",  # 7 consecutive words of the long one: < n
             "question that has more than eight words in it",   # 8 consecutive words
             "What  is\n37 + 4?",                  # whitespace runs do not matter
             "the sum of 37 and 45 is 82"]         # '37 and 4' is in it as characters, not as words
    assert student.find_contaminated(train, evaluation, n=8) == [0, 3, 4], \
        "words are compared whole, after normalize_text; a short evaluation text counts as a whole"
    assert student.find_contaminated(train, [], n=8) == []


@pytest.mark.exercise("6.8")
def test_find_contaminated_default_is_gpt3_thirteen_grams(student):
    long_text = " ".join(f"word{i}" for i in range(30))
    twelve = " ".join(f"word{i}" for i in range(5, 17))
    thirteen = " ".join(f"word{i}" for i in range(5, 18))
    assert student.find_contaminated([twelve, thirteen, long_text], [long_text]) == [1, 2]


# -- 6.9 grouped_split --------------------------------------------------------------------------------
@pytest.mark.exercise("6.8")
def test_find_contaminated_leaves_the_texts_alone(student):
    train, evaluation = ["The Answer is 82.", "Sort  these numbers"], ["the answer is 82."]
    before = (list(train), list(evaluation))
    student.find_contaminated(train, evaluation, n=3)
    assert (train, evaluation) == before, f"find_contaminated changed the caller's texts to {(train, evaluation)}"


@pytest.mark.exercise("6.9")
@pytest.mark.parametrize("n, test_size, seed", [(10, 0.2, 42), (37, 0.25, 0), (101, 0.1, 7), (5, 0.5, 3)])
def test_grouped_split_of_single_row_groups_is_datasets_train_test_split(student, n, test_size, seed):
    got = student.grouped_split(list(range(n)), test_size, seed=seed)
    train, test = datasets_test_rows(n, test_size, seed)
    assert got["test"] == test and got["train"] == train, \
        "with every row its own group: Dataset.train_test_split(test_size, seed) (numpy default_rng permutation)"
    assert got["validation"] == []


@pytest.mark.exercise("6.9")
def test_grouped_split_keeps_groups_together_where_a_row_split_leaks(student):
    rng = random.Random(8)
    items = [f"item{i}" for i in range(40)]
    groups = [rng.choice(items) for _ in range(200)]       # rows: paraphrases of 40 items
    by_row = student.grouped_split(list(range(len(groups))), 0.2, seed=1)
    leaked = {groups[r] for r in by_row["test"]} & {groups[r] for r in by_row["train"]}
    assert leaked, "a row-level split of paraphrased items puts items on both sides (the test data is chosen so)"
    by_group = student.grouped_split(groups, 0.2, seed=1)
    assert not {groups[r] for r in by_group["test"]} & {groups[r] for r in by_group["train"]}, \
        "an item's rows landed in both train and test: split the groups, not the rows"
    assert sorted(by_group["train"] + by_group["test"]) == list(range(200))
    assert len({groups[r] for r in by_group["test"]}) == math.ceil(0.2 * len(set(groups)))


@pytest.mark.exercise("6.9")
def test_grouped_split_draws_groups_in_order_of_first_appearance(student):
    groups = ["b", "b", "a", "c", "a", "d", "e", "c", "f", "g"]
    order = list(dict.fromkeys(groups))                    # b a c d e f g
    permutation = np.random.default_rng(11).permutation(len(order)).tolist()
    test_groups, validation_groups = {order[g] for g in permutation[:2]}, {order[g] for g in permutation[2:4]}
    got = student.grouped_split(groups, 0.25, validation_size=0.25, seed=11)
    assert got == {"train": [r for r, g in enumerate(groups) if g not in test_groups | validation_groups],
                   "validation": [r for r, g in enumerate(groups) if g in validation_groups],
                   "test": [r for r, g in enumerate(groups) if g in test_groups]}


@pytest.mark.exercise("6.9")
def test_grouped_split_is_seeded(student):
    groups = [i // 3 for i in range(90)]
    first = student.grouped_split(groups, 0.3, validation_size=0.1, seed=5)
    assert student.grouped_split(groups, 0.3, validation_size=0.1, seed=5) == first
    assert student.grouped_split(groups, 0.3, validation_size=0.1, seed=6) != first
    assert sorted(sum(first.values(), [])) == list(range(90))


@pytest.mark.exercise("6.9")
def test_grouped_split_refuses_to_leave_no_training_group(student):
    with pytest.raises(ValueError):
        student.grouped_split(["a", "a", "b"], 0.5, validation_size=0.4, seed=0)


# -- 6.10 fill_template -------------------------------------------------------------------------------
@pytest.mark.exercise("6.9")
def test_grouped_split_leaves_the_groups_alone(student):
    groups = ["b", "a", "b", 7, "c", 7]
    before = list(groups)
    student.grouped_split(groups, test_size=0.25, seed=3)
    assert groups == before, f"grouped_split changed the caller's groups to {groups}: number them in a copy"


@pytest.mark.exercise("6.10")
@pytest.mark.parametrize("template, values", [
    ("What is {a} plus {b}?", {"a": 37, "b": 45}),
    ("{x} and {x} again, {{literal}} braces", {"x": "twice"}),
    ("No slots at all.", {}),
    ("{name}: {score}", {"name": "parser", "score": 0.5}),
])
def test_fill_template_equals_str_format(student, template, values):
    before = dict(values)
    assert student.fill_template(template, values) == template.format(**values)
    assert values == before


@pytest.mark.exercise("6.10")
def test_fill_template_fails_on_a_missing_slot_instead_of_leaving_it(student):
    assert_raises_naming(ValueError, lambda: student.fill_template("What is the {location} of the {event}?",
                                                                   {"event": "PyCon"}), "location")


@pytest.mark.exercise("6.10")
def test_fill_template_fails_on_a_value_without_a_slot(student):
    assert_raises_naming(ValueError, lambda: student.fill_template("Where is {event} held?",
                                                                   {"event": "PyCon", "location": "Pittsburgh"}),
                         "location")


@pytest.mark.exercise("6.10")
def test_fill_template_checks_the_declared_types(student):
    types = {"a": "int", "b": "float", "w": "str"}
    assert student.fill_template("{a} {b} {w}", {"a": 3, "b": 2, "w": "x"}, types) == "3 2 x"
    assert student.fill_template("{a} {b} {w}", {"a": 3, "b": 2.5, "w": "x"}, types) == "3 2.5 x"
    assert_raises_naming(TypeError, lambda: student.fill_template("{a} {b} {w}", {"a": "3", "b": 2, "w": "x"}, types), "a")
    assert_raises_naming(TypeError, lambda: student.fill_template("{a} {b} {w}", {"a": True, "b": 2, "w": "x"}, types), "a")
    assert_raises_naming(TypeError, lambda: student.fill_template("{a} {b} {w}", {"a": 1, "b": 2, "w": 3}, types), "w")
    assert student.fill_template("{a}", {"a": [1, 2]}, {}) == "[1, 2]", "a slot without a declared type takes any value"
    assert_raises_naming(ValueError, lambda: student.fill_template("{a}", {"a": 1}, {"a": "int", "z": "str"}), "z")


@pytest.mark.exercise("6.10")
@pytest.mark.parametrize("template", ["{", "}", "What {is", "{0}", "{}", "{x:>3}", "{x!r}", "{x.y}", "{x[0]}"])
def test_fill_template_rejects_a_malformed_template(student, template):
    with pytest.raises(ValueError):
        student.fill_template(template, {"x": 1})


# -- 6.11 select_shots --------------------------------------------------------------------------------
@pytest.mark.exercise("6.11")
@pytest.mark.parametrize("seed", [0, 3, 17])
def test_select_shots_random_follows_torch_randperm(student, seed):
    lengths = [10] * 20
    order = torch.randperm(20, generator=torch.Generator().manual_seed(seed)).tolist()
    assert student.select_shots(lengths, 1000, 5, seed=seed) == order[:5]


@pytest.mark.exercise("6.11")
def test_select_shots_nearest_puts_the_most_similar_last(student):
    gen = torch.Generator().manual_seed(4)
    scores = torch.rand(30, generator=gen, dtype=torch.float64)
    top = torch.topk(scores, 4).indices.tolist()
    assert student.select_shots([7] * 30, 1000, 4, scores=scores) == top[::-1], \
        "nearest: the k most similar, in prompt order: least similar of them first, most similar last"
    ties = torch.tensor([0.5, 0.9, 0.5, 0.9, 0.1])
    assert student.select_shots([1] * 5, 100, 3, scores=ties) == [0, 3, 1], \
        "ties go to the lower index (a stable sort)"


@pytest.mark.exercise("6.11")
def test_select_shots_skips_what_does_not_fit_and_goes_on(student):
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    lengths = [40, 70, 30, 10, 5]
    assert student.select_shots(lengths, 80, 3, scores=scores) == [3, 2, 0], \
        "take 0 (40), skip 1 (70 > 40 left), take 2 (30), take 3 (10): exactly the budget of 80 is allowed"
    order = torch.randperm(5, generator=torch.Generator().manual_seed(2)).tolist()
    used, expected = 0, []
    for i in order:
        if used + lengths[i] <= 50 and len(expected) < 2:
            expected.append(i)
            used += lengths[i]
    assert student.select_shots(lengths, 50, 2, seed=2) == expected


@pytest.mark.exercise("6.11")
def test_select_shots_edge_cases(student):
    assert student.select_shots([5, 5], 4, 2, seed=0) == [], "nothing fits"
    assert student.select_shots([5, 5], 100, 0, seed=0) == [], "k=0"
    assert student.select_shots([], 100, 3, seed=0) == []
    assert sorted(student.select_shots([1, 1, 1], 100, 10, seed=1)) == [0, 1, 2], "k larger than the pool"
    assert student.select_shots([0, 0], 0, 2, scores=torch.tensor([1.0, 2.0])) == [0, 1], "empty shots fit a zero budget"


# -- 6.12 few_shot_prompt -----------------------------------------------------------------------------
SHOTS = [{"question": "What is 2 plus 3?", "answer": "5", "rationale": "2 + 3 = 5."},
         {"question": "Sort.\n\n3, 1", "answer": "1, 3", "rationale": "The smallest is 1, then 3."}]


@pytest.mark.exercise("6.12")
def test_few_shot_prompt_zero_shot(student):
    assert student.few_shot_prompt("What is 4 plus 4?") == "Question: What is 4 plus 4?\nAnswer:", \
        "no space after 'Answer:': the model's first token carries it"


@pytest.mark.exercise("6.12")
def test_few_shot_prompt_puts_shots_first_in_order(student):
    assert student.few_shot_prompt("What is 4 plus 4?", SHOTS) == (
        "Question: What is 2 plus 3?\nAnswer: 5\n\n"
        "Question: Sort.\n\n3, 1\nAnswer: 1, 3\n\n"
        "Question: What is 4 plus 4?\nAnswer:")


@pytest.mark.exercise("6.12")
def test_few_shot_prompt_chain_of_thought(student):
    assert student.few_shot_prompt("What is 4 plus 4?", SHOTS[:1], chain_of_thought=True) == (
        "Question: What is 2 plus 3?\nAnswer: Let's think step by step. 2 + 3 = 5. So the answer is 5.\n\n"
        "Question: What is 4 plus 4?\nAnswer: Let's think step by step.")
    assert student.few_shot_prompt("Q?", chain_of_thought=True) == "Question: Q?\nAnswer: Let's think step by step.", \
        "zero-shot chain of thought (Kojima et al.)"


@pytest.mark.exercise("6.12")
def test_few_shot_prompt_rejects_an_incomplete_shot_naming_it(student):
    assert_raises_naming(ValueError, lambda: student.few_shot_prompt("Q?", [SHOTS[0], {"question": "x"}]),
                         "shots[1]", "answer")
    assert_raises_naming(ValueError, lambda: student.few_shot_prompt(
        "Q?", [SHOTS[0], {"question": "x", "answer": "y"}], chain_of_thought=True), "shots[1]", "rationale")
    assert student.few_shot_prompt("Q?", [{"question": "x", "answer": "y"}]) == \
        "Question: x\nAnswer: y\n\nQuestion: Q?\nAnswer:", "a plain prompt needs no rationale"
    before = copy.deepcopy(SHOTS)
    student.few_shot_prompt("Q?", SHOTS, chain_of_thought=True)
    assert SHOTS == before


# -- 6.13 sample_instructions -------------------------------------------------------------------------
EVENTS = [{"event": f"Conference {i}", "city": f"City {i}", "year": 2000 + i} for i in range(6)]
EVENT_TEMPLATES = [{"instruction": "Where is {event} held?", "output": "{city}"},
                   {"instruction": "In which year is {event}?", "output": "{year}"},
                   {"instruction": "Which event of {year} is in {city}?", "output": "{event}"}]


def drawn_pairs(seed, n, n_records, n_templates):
    """The first ``n`` distinct (record, template) pairs of ``random.Random(seed)``'s draws, record first."""
    rng = random.Random(seed)
    stream = ((rng.randrange(n_records), rng.randrange(n_templates)) for _ in itertools.count())
    return list(itertools.islice(dict.fromkeys(itertools.islice(stream, 10_000)), n))


@pytest.mark.exercise("6.13")
@pytest.mark.parametrize("seed, n", [(0, 5), (1, 18), (7, 10)])
def test_sample_instructions_draws_distinct_pairs_in_the_seeded_order(student, seed, n):
    got = student.sample_instructions(EVENTS, EVENT_TEMPLATES, n, seed)
    assert [(e["record"], e["template"]) for e in got] == drawn_pairs(seed, n, len(EVENTS), len(EVENT_TEMPLATES)), \
        "pairs: r = rng.randrange(len(records)) then t = rng.randrange(len(templates)), repeats skipped"


@pytest.mark.exercise("6.13")
def test_sample_instructions_fills_question_and_answer_from_one_record(student):
    got = student.sample_instructions(EVENTS, EVENT_TEMPLATES, 18, 3)
    for example in got:
        record, template = EVENTS[example["record"]], EVENT_TEMPLATES[example["template"]]
        assert example["instruction"] == template["instruction"].format(**record), \
            "the instruction must be filled from the drawn record (all slots from the same one)"
        assert example["output"] == template["output"].format(**record)
        assert set(example) == {"instruction", "output", "record", "template"}
    assert len({(e["record"], e["template"]) for e in got}) == 18


@pytest.mark.exercise("6.13")
def test_sample_instructions_refuses_impossible_requests(student):
    with pytest.raises(ValueError):
        student.sample_instructions(EVENTS, EVENT_TEMPLATES, 19, 0)
    records = EVENTS[:2] + [{"event": "Sprint", "year": 2030}]
    assert_raises_naming(ValueError, lambda: student.sample_instructions(records, EVENT_TEMPLATES[:1], 3, 0),
                         "record 2", "city")


@pytest.mark.exercise("6.13")
def test_sample_instructions_is_seeded_and_leaves_inputs_alone(student):
    records, templates = copy.deepcopy(EVENTS), copy.deepcopy(EVENT_TEMPLATES)
    first = student.sample_instructions(records, templates, 10, 4)
    assert student.sample_instructions(records, templates, 10, 4) == first
    assert student.sample_instructions(records, templates, 10, 5) != first
    assert records == EVENTS and templates == EVENT_TEMPLATES


# -- not graded: the course's chat tokenizer and instruction data set -------------------------------------
def test_course_chat_tokenizer_passes_trls_checks():
    from trl.chat_template_utils import (has_generation_markers, is_chat_template_prefix_preserving,
                                         is_chat_template_stop_token_trained)

    from course_lib.instruct import IM_END, IM_START, chat_tokenizer

    tokenizer = chat_tokenizer()
    assert tokenizer.convert_tokens_to_ids([IM_START, IM_END]) == [len(tokenizer) - 2, len(tokenizer) - 1]
    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer), "TRL: <|im_end|> must be in the assistant mask"
    assert is_chat_template_prefix_preserving(tokenizer)


def test_chat_tokenizer_adds_missing_chat_tokens():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from course_lib.instruct import IM_END, IM_START, chat_tokenizer

    bare = Tokenizer(models.BPE())
    bare.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bare.train_from_iterator(["hello world"] * 5, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bare, eos_token="<|endoftext|>")
    size = len(tokenizer)
    assert IM_START not in tokenizer.get_vocab()
    tokenizer = chat_tokenizer(tokenizer)
    assert tokenizer.convert_tokens_to_ids([IM_START, IM_END]) == [size, size + 1]
    text = tokenizer.apply_chat_template(conversation("hello", "world"), tokenize=False)
    assert tokenizer(text)["input_ids"].count(size) == 2, "<|im_start|> is one token, never split"


def test_instruction_dataset_is_split_by_item_and_checkable():
    from datasets import Dataset

    from course_lib.instruction_data import FAMILIES, TEST_SIZE, VALIDATION_SIZE, check_answer, data_card, \
        instruction_dataset

    splits = {name: instruction_dataset(name) for name in ("train", "validation", "test")}
    assert all(isinstance(d, Dataset) for d in splits.values())
    card = data_card()
    for family in FAMILIES:
        counts = card["counts"][family]
        assert counts["test"] == TEST_SIZE and counts["validation"] <= VALIDATION_SIZE
        assert counts["raw"] == (counts["exact_duplicates"] + counts["paraphrases"] + counts["contaminated"]
                                 + counts["train"] + counts["validation"] + counts["test"])
    groups = {name: set(d["group"]) for name, d in splits.items()}
    assert not groups["train"] & groups["test"] and not groups["validation"] & groups["test"]
    assert not groups["train"] & groups["validation"]
    assert len(set(splits["train"]["id"])) == len(splits["train"])
    test = splits["test"]
    assert set(test["family"]) == set(FAMILIES)
    for example in test.select(range(0, len(test), 20)):
        assert example["messages"][1] == {"role": "assistant", "content": example["output"]}
        assert check_answer(example["family"], example, example["output"])
        assert check_answer(example["family"], example, f" {example['output']}.\n")
        assert not check_answer(example["family"], example, f"The answer is {example['output']}")
        assert not check_answer(example["family"], example, example["output"] + "0")


def test_instruction_data_is_deterministic_and_checks_answers_strictly():
    from course_lib.instruction_data import check_answer, raw_examples, stdlib_records

    assert raw_examples("arithmetic", 50, seed=3) == raw_examples("arithmetic", 50, seed=3)
    assert raw_examples("sorting", 50, seed=3) != raw_examples("sorting", 50, seed=4)
    sort = {"output": "7, 19, 42"}
    assert check_answer("sorting", sort, "7,19 ,42") and not check_answer("sorting", sort, "7, 42, 19")
    assert check_answer("arithmetic", {"output": "82"}, "+82") and not check_answer("arithmetic", {"output": "82"}, "182")
    assert not check_answer("string", {"output": "RESRAP"}, "resrap"), "case matters for a string transform"
    kinds = {record["name"]: record["kind"] for record in stdlib_records()}
    for example in raw_examples("naming", 100, seed=1):
        name = example["group"].removeprefix("naming:")
        assert f"`{name}`" in example["instruction"]
        assert example["output"] == ("class" if kinds[name] == "class" else "function")
    for example in raw_examples("arithmetic", 200, seed=1):
        a, op, b = re.fullmatch(r"arithmetic:(\d+)([-+*])(\d+)", example["group"]).groups()
        expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert example["output"] == str(expected) and check_answer("arithmetic", example, str(expected))


def test_prompt_template_and_answer_extraction():
    from course_lib.instruct import PromptTemplate, extract_answer

    template = PromptTemplate("What is {a} plus {b}?", a="int", b="int")
    assert template.slots == ["a", "b"]
    assert extract_answer(" 82\nQuestion: next") == "82"
    assert extract_answer(" Let's see. 2 + 3 = 5. So the answer is 5.\n\nQuestion:", chain_of_thought=True) == "5"
    assert extract_answer(" no conclusion", chain_of_thought=True) == ""
    with pytest.raises(ValueError):
        PromptTemplate("{a}", b="int")
