"""Chapter 7 graded tests (hidden: grading only, not in the student handout). More inputs for the
contracts the public tests check."""

import math

import pytest
import torch

from grading.expect import assert_close
from tests.test_generation import reference_mode
from tests.test_sft import (IGNORE, PACK_HINTS, answer_setup, chat_tokenizer, check_batch, conversations,  # noqa: F401
                            expected_answers, hf_neftune, hf_step_loss, losses_alone, memo, rendered, tiny_course_lm,
                            tiny_llama, to_device, trl_packed, trl_padded, trl_sft)


def random_examples(seed, n, vocab=50, max_len=12):
    """Random rendered examples whose assistant masks have one to three runs."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, max_len + 1, (1,), generator=gen))
        ids = torch.randint(3, vocab, (length,), generator=gen).tolist()
        mask = (torch.rand(length, generator=gen) < 0.4).long().tolist()
        out.append({"input_ids": ids, "assistant_masks": mask})
    return out


def trl_collated(examples, pad, padding_free=False):
    """TRL's collator on examples whose labels are built from their assistant masks as SFTTrainer does."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = [{"input_ids": e["input_ids"], "labels": [t if m else IGNORE for t, m in zip(e["input_ids"], e["assistant_masks"])]}
            for e in examples]
    batch = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=padding_free)(rows)
    keys = ("input_ids", "position_ids", "labels") if padding_free else ("input_ids", "attention_mask", "labels")
    return rows, {k: batch[k] for k in keys}


# -- 7.1 --------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("7.1")
@pytest.mark.parametrize("indices", [[4, 5, 6, 7, 8], [9], list(range(10)), [8, 9]])
def test_hidden_collate_chat_against_trl_on_more_conversations(student, chat_tokenizer, conversations, trl_sft,
                                                                indices):
    examples = rendered(chat_tokenizer, [conversations[i] for i in indices])
    check_batch(student.collate_chat(examples, chat_tokenizer.pad_token_id), trl_padded(trl_sft, indices, "cpu"),
                f"collate_chat of conversations {indices}")


@pytest.mark.exercise("7.1")
@pytest.mark.parametrize("seed, pad", [(0, 0), (1, 2), (2, 49)])
def test_hidden_collate_chat_random_examples(student, seed, pad):
    examples = random_examples(seed, 7)
    _, expected = trl_collated(examples, pad)
    check_batch(student.collate_chat(examples, pad), expected, f"collate_chat of 7 random examples, pad {pad}")


@pytest.mark.exercise("7.1")
def test_hidden_collate_chat_last_turn_of_random_masks(student):
    examples = random_examples(3, 9)
    got = student.collate_chat(examples, 1, all_turns=False)
    for row, e in enumerate(examples):
        mask = e["assistant_masks"]
        ones = [t for t, m in enumerate(mask) if m]
        keep = set()
        if ones:
            t = ones[-1]
            while t >= 0 and mask[t]:
                keep.add(t)
                t -= 1
        expected = [i if t in keep else IGNORE for t, i in enumerate(e["input_ids"])]
        assert got["labels"][row, :len(mask)].tolist() == expected, f"last-turn labels of random example {row}"


# -- 7.2 --------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("7.2")
@pytest.mark.parametrize("indices", [[3, 4, 5, 6, 7, 8, 9], [8], [9, 2], list(range(10))])
def test_hidden_pack_examples_against_trl_on_more_conversations(student, trl_sft, indices):
    _, rows = trl_sft
    check_batch(student.pack_examples([rows[i] for i in indices]), trl_packed(trl_sft, indices, "cpu"),
                f"pack_examples of conversations {indices}", hints=PACK_HINTS)


@pytest.mark.exercise("7.2")
@pytest.mark.parametrize("seed", [4, 5])
def test_hidden_pack_examples_random_examples(student, seed):
    rows, expected = trl_collated(random_examples(seed, 6), 0, padding_free=True)
    check_batch(student.pack_examples(rows), expected, "pack_examples of 6 random examples", hints=PACK_HINTS)


@pytest.mark.exercise("7.2")
def test_hidden_packed_conversations_of_the_gpt2_style_course_model(student, trl_sft, device):
    _, rows = trl_sft
    labelled = [rows[i] for i in (1, 9, 3)]
    vocab = max(max(r["input_ids"]) for r in rows) + 1
    model = tiny_course_lm(device, vocab, seed=4, **{"norm_type": "layernorm", "hidden_act": "gelu_tanh",
                                                     "position_embedding_type": "learned", "attention_bias": True,
                                                     "mlp_bias": True}).eval()
    packed = to_device(student.pack_examples(labelled), device)
    alone = losses_alone(model, labelled, device)
    with reference_mode(), torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits
    starts = [0] + torch.tensor([len(r["input_ids"]) for r in labelled]).cumsum(0).tolist()
    got = torch.tensor([torch.nn.functional.cross_entropy(logits[0, a:b - 1].double(), packed["labels"][0, a + 1:b],
                                                          ignore_index=IGNORE).item()
                        for a, b in zip(starts, starts[1:])], dtype=torch.float64)
    assert_close(got, alone, rtol=1e-5, atol=1e-6, what="packed losses with learned position embeddings",
                 hint="learned positions are looked up by position_ids: each example restarts at 0")


# -- 7.3 --------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("7.3")
@pytest.mark.parametrize("family, packed", [("llama", True), ("course", False)])
def test_hidden_sft_loss_other_models_and_layouts(student, trl_sft, device, family, packed):
    _, rows = trl_sft
    vocab = max(max(r["input_ids"]) for r in rows) + 1

    def make():
        model = (tiny_llama if family == "llama" else tiny_course_lm)(device, vocab, seed=9).eval()
        batch = trl_packed if packed else trl_padded
        return model, [batch(trl_sft, [5, 6], device), batch(trl_sft, [7, 8, 9, 0], device)]

    model, micro_batches = memo(("hidden step", str(device), family, packed), make)
    got = student.sft_loss(model, micro_batches).detach()
    expected = memo(("hidden step loss", str(device), family, packed),
                    lambda: hf_step_loss(model, micro_batches).float())
    assert_close(got, expected, rtol=1e-5,
                 what=f"sft_loss of 2 {'packed' if packed else 'padded'} micro-batches ({family} model)")


@pytest.mark.exercise("7.3")
def test_hidden_sft_loss_mixed_micro_batches_per_example(student, trl_sft, device):
    _, rows = trl_sft
    vocab = max(max(r["input_ids"]) for r in rows) + 1
    order = [3, 4, 9, 1, 2, 5]

    model = memo(("hidden mixed", str(device)), lambda: tiny_llama(device, vocab, seed=10).eval())
    micro_batches = [trl_packed(trl_sft, [3, 4], device), trl_padded(trl_sft, [9], device),
                     trl_packed(trl_sft, [1, 2, 5], device)]
    with torch.no_grad():
        none = student.sft_loss(model, micro_batches, reduction="none")
    alone = memo(("hidden mixed alone", str(device)), lambda: losses_alone(model, [rows[i] for i in order], device))
    assert_close(none, alone.float(), rtol=1e-5, atol=1e-6, what="sft_loss(reduction='none') of packed, padded, packed")


@pytest.mark.exercise("7.3")
def test_hidden_sft_loss_of_a_bfloat16_model_is_float32(student, device):
    model = tiny_course_lm(device, 30, seed=11).to(torch.bfloat16).eval()
    ids = torch.tensor([[5, 6, 7, 8]], device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    got = student.sft_loss(model, [batch]).detach()
    assert got.dtype == torch.float32, f"sft_loss of a bfloat16 model returned {got.dtype}: compute the loss in float32"
    assert_close(got, hf_step_loss(model, [batch]).float(), rtol=1e-3, what="sft_loss of a bfloat16 model")


# -- 7.4 --------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("7.4")
@pytest.mark.parametrize("shape, alpha, seed, dtype", [((3, 1, 4), 0.5, 123456, torch.float32),
                                                       ((1, 64, 32), 5.0, 9, torch.float64),
                                                       ((2, 3, 1), 10.0, 0, torch.float32)])
def test_hidden_neftune_noise_more_shapes(student, shape, alpha, seed, dtype):
    embeddings = torch.randn(*shape, generator=torch.Generator().manual_seed(seed % 1000)).to(dtype)
    assert_close(student.neftune_noise(embeddings, alpha, seed), hf_neftune(embeddings, alpha, seed), rtol=1e-5,
                 atol=1e-6, what=f"neftune_noise of {shape} {dtype} embeddings, alpha={alpha}")


# -- 7.5 --------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("7.5")
@pytest.mark.parametrize("seed, max_new_tokens", [(3, 5), (4, 8)])
def test_hidden_greedy_answers_more_models(student, device, seed, max_new_tokens):
    model, prompts, eos = answer_setup(device, seed)
    got = student.greedy_answers(model, prompts, pad_token_id=0, eos_token_id=eos, max_new_tokens=max_new_tokens)
    assert got == expected_answers(device, seed, eos, 0, max_new_tokens)


@pytest.mark.exercise("7.5")
def test_hidden_greedy_answers_one_prompt(student, device):
    model, prompts, eos = answer_setup(device, 0)
    got = student.greedy_answers(model, prompts[2:3], pad_token_id=0, eos_token_id=eos, max_new_tokens=8)
    assert got == expected_answers(device, 0, eos, 0, 8)[2:3]
