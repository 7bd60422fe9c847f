"""Chapter 6 graded tests (hidden: grading only, not in the student handout)."""

import copy
import itertools
import random

import numpy as np
import pytest
import torch

from course_lib.instruction_data import jaccard, normalize_text, raw_examples, word_shingles
from tests.test_instruct import (EVENT_TEMPLATES, EVENTS, SHOTS, assert_raises_naming, brute_force_contaminated,
                                 conversation, datasets_test_rows, datasketch_dedup, datasketch_minhash,
                                 datasketch_pairs, drawn_pairs, hf_render, paraphrase_texts, random_conversation,
                                 reference_signatures, tokenizer_json)


def data_rows(family, n):
    """The first ``n`` training rows of ``family`` in the course instruction data set (built once, cached)."""
    from course_lib.instruction_data import build_instruction_data

    return [r for r in build_instruction_data()["splits"]["train"] if r["family"] == family][:n]


# -- 6.1 ------------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.1")
def test_hidden_alpaca_to_messages_on_the_course_data_records(student):
    rows = raw_examples("sorting", 20, seed=9) + raw_examples("arithmetic", 5, seed=9)
    records = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in rows]
    got = student.alpaca_to_messages(records, system="Answer with the result only.")
    for record, messages in zip(records, got):
        user = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
        assert messages == conversation(user, record["output"], system="Answer with the result only.")


@pytest.mark.exercise("6.1")
def test_hidden_alpaca_to_messages_names_the_first_bad_record(student):
    records = [{"instruction": "a", "output": "b"}] * 7 + [{"instruction": "a"}, {"output": "b"}]
    assert_raises_naming(ValueError, lambda: student.alpaca_to_messages(records), "record 7", "output")


# -- 6.2 ------------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.2")
def test_hidden_messages_to_alpaca_many_conversations(student):
    rng = random.Random(2)
    conversations = [conversation(f"Question {i}?", f"Answer {i}.", system=rng.choice([None, "Be brief."]))
                     for i in range(30)]
    got = student.messages_to_alpaca(conversations)
    for messages, record in zip(conversations, got):
        expected = {"instruction": messages[-2]["content"], "input": "", "output": messages[-1]["content"]}
        if messages[0]["role"] == "system":
            expected["system"] = messages[0]["content"]
        assert record == expected


@pytest.mark.exercise("6.2")
def test_hidden_messages_to_alpaca_rejects_two_system_messages(student):
    bad = [{"role": "system", "content": "A."}, {"role": "system", "content": "B."},
           {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
    assert_raises_naming(ValueError, lambda: student.messages_to_alpaca([conversation("x", "y")] * 4 + [bad]),
                         "record 4")


# -- 6.3 ------------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.3")
def test_hidden_render_chat_more_random_conversations(student):
    rng = random.Random(11)
    for _ in range(40):
        messages = random_conversation(rng)
        add = rng.random() < 0.5
        assert student.render_chat(tokenizer_json(), messages, add) == hf_render(messages, add), messages


@pytest.mark.exercise("6.3")
def test_hidden_render_chat_with_the_course_tokenizer(student):
    from course_lib.instruct import chat_tokenizer

    tokenizer = chat_tokenizer()
    for example in raw_examples("sorting", 6, seed=1) + raw_examples("arithmetic", 6, seed=1):
        messages = conversation(example["instruction"] + "\n\n" + example["input"], example["output"],
                                system="You are a careful assistant.")
        got = student.render_chat(tokenizer.backend_tokenizer.to_str(), messages, False)
        expected = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        assert got["input_ids"] == list(expected["input_ids"])
        assert got["assistant_masks"] == list(expected["assistant_masks"])


# -- 6.4 ------------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.4")
def test_hidden_exact_dedup_on_raw_generator_output(student):
    texts = [r["instruction"] + "\n" + r["output"] for r in raw_examples("arithmetic", 400, seed=4)]
    texts += [t.upper() for t in texts[:50]]
    expected = list(dict.fromkeys(normalize_text(t) for t in texts))
    got = student.exact_dedup(texts)
    assert [normalize_text(texts[i]) for i in got] == expected


# -- 6.5 ------------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.5")
def test_hidden_minhash_signatures_of_raw_examples_equal_datasketch(student):
    texts = [r["instruction"] for r in data_rows("string", 40)] + ["", "x"]
    got = student.minhash_signatures(texts, num_perm=32, seed=11, ngram=2)
    expected = torch.stack([torch.from_numpy(datasketch_minhash(t, 32, 11, 2).hashvalues.astype(np.int64))
                            for t in texts])
    assert torch.equal(got, expected)


@pytest.mark.exercise("6.5")
def test_hidden_minhash_long_documents(student):
    from course_lib.corpus import load_corpus

    docs = [d[:3000] for d in load_corpus("validation")[:4]]
    docs.append(docs[0][:1500] + " appended words here " + docs[0][1500:])
    got = student.minhash_signatures(docs, num_perm=256, seed=2)
    for i, j in itertools.combinations(range(len(docs)), 2):
        exact = jaccard(word_shingles(docs[i], 3), word_shingles(docs[j], 3))
        assert abs((got[i] == got[j]).double().mean().item() - exact) <= 0.125


# -- 6.6 ------------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.6")
@pytest.mark.parametrize("seed, bands, rows", [(21, 10, 3), (22, 64, 2), (23, 4, 25)])
def test_hidden_lsh_candidate_pairs_more_data(student, seed, bands, rows):
    signatures = reference_signatures(paraphrase_texts(seed=seed, n_items=15), num_perm=128, seed=seed)
    assert [tuple(p) for p in student.lsh_candidate_pairs(signatures, bands, rows)] == \
        datasketch_pairs(signatures, bands, rows, seed=seed)


# -- 6.7 ------------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.7")
def test_hidden_near_dedup_on_raw_generator_output(student):
    texts = [r["instruction"] + " " + r["input"] for r in raw_examples("sorting", 60, seed=5)]
    texts += [t.replace("Sort", "Please sort") for t in texts[:15]]
    got = student.near_dedup(texts, threshold=0.7, num_perm=128, bands=32, rows=4, seed=3, ngram=2)
    expected = datasketch_dedup(texts, 0.7, 128, 32, 4, 3, 2)
    assert got["keep"] == expected["keep"]
    assert [tuple(d) for d in got["duplicates"]] == expected["duplicates"]


# -- 6.8 ------------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.8")
def test_hidden_find_contaminated_on_generated_questions(student):
    rows = raw_examples("arithmetic", 300, seed=8)
    train = [r["instruction"] + " " + r["output"] for r in rows[:250]]
    evaluation = [r["instruction"] for r in rows[250:]]
    for n in (4, 13):
        assert student.find_contaminated(train, evaluation, n=n) == brute_force_contaminated(train, evaluation, n)


# -- 6.9 ------------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.9")
@pytest.mark.parametrize("n, test_size, seed", [(250, 0.15, 1), (64, 0.33, 2)])
def test_hidden_grouped_split_row_level_more_sizes(student, n, test_size, seed):
    got = student.grouped_split([f"row{i}" for i in range(n)], test_size, seed=seed)
    assert (got["train"], got["test"]) == datasets_test_rows(n, test_size, seed)


@pytest.mark.exercise("6.9")
def test_hidden_grouped_split_of_the_raw_generator_groups(student):
    rows = raw_examples("arithmetic", 300, seed=3)
    groups = [r["group"] for r in rows]
    got = student.grouped_split(groups, 0.2, validation_size=0.1, seed=4)
    sides = {name: {groups[r] for r in idx} for name, idx in got.items()}
    assert not sides["train"] & sides["test"] and not sides["train"] & sides["validation"]
    assert not sides["validation"] & sides["test"]
    n_groups = len(set(groups))
    assert len(sides["test"]) == -(-2 * n_groups // 10) and sorted(sum(got.values(), [])) == list(range(300))


# -- 6.10 -----------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.10")
def test_hidden_fill_template_more_cases(student):
    assert student.fill_template("{{{a}}}", {"a": 5}) == "{5}"
    assert student.fill_template("{a}{b}{a}", {"a": "x", "b": 1.5}, {"b": "float"}) == "x1.5x"
    assert_raises_naming(ValueError, lambda: student.fill_template("{a} {b} {c}", {"a": 1, "c": 3}), "b")
    with pytest.raises(TypeError):
        student.fill_template("{a}", {"a": False}, {"a": "float"})


# -- 6.11 -----------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.11")
def test_hidden_select_shots_respects_the_budget_on_random_pools(student):
    gen = torch.Generator().manual_seed(9)
    for trial in range(5):
        lengths = torch.randint(5, 60, (25,), generator=gen).tolist()
        scores = torch.rand(25, generator=gen)
        for kwargs in ({"seed": trial}, {"scores": scores}):
            chosen = student.select_shots(lengths, 100, 6, **kwargs)
            assert sum(lengths[i] for i in chosen) <= 100 and len(set(chosen)) == len(chosen) <= 6
            rest = [i for i in range(25) if i not in chosen]
            if len(chosen) < 6:  # every candidate left out would have overflowed the budget at its turn
                assert all(lengths[i] > 100 - sum(lengths[c] for c in chosen) for i in rest)


# -- 6.12 -----------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.12")
def test_hidden_few_shot_prompt_with_data_set_shots(student):
    rows = raw_examples("arithmetic", 3, seed=12)
    shots = [{"question": r["instruction"], "answer": r["output"], "rationale": r["rationale"]} for r in rows[:2]]
    expected = "\n\n".join([f"Question: {s['question']}\nAnswer: Let's think step by step. {s['rationale']} "
                            f"So the answer is {s['answer']}." for s in shots]
                           + [f"Question: {rows[2]['instruction']}\nAnswer: Let's think step by step."])
    assert student.few_shot_prompt(rows[2]["instruction"], shots, chain_of_thought=True) == expected
    assert student.few_shot_prompt("Q", SHOTS * 3).count("\n\nQuestion: ") == 6


# -- 6.13 -----------------------------------------------------------------------------------------------
@pytest.mark.exercise("6.13")
def test_hidden_sample_instructions_all_pairs(student):
    got = student.sample_instructions(EVENTS, EVENT_TEMPLATES, 18, 99)
    assert [(e["record"], e["template"]) for e in got] == drawn_pairs(99, 18, 6, 3)
    assert sorted((e["record"], e["template"]) for e in got) == list(itertools.product(range(6), range(3)))
    records = copy.deepcopy(EVENTS)
    assert student.sample_instructions(records, EVENT_TEMPLATES, 1, 0)[0]["record"] == drawn_pairs(0, 1, 6, 3)[0][0]
