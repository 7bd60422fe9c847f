"""Chapter 7 graded tests (public): the chat collator, padding-free packing, the SFT loss, NEFTune noise
and batched greedy answers.

The references are outside the course: TRL's ``SFTTrainer`` (its labels with ``assistant_only_loss``,
its ``DataCollatorForLanguageModeling`` padded and padding-free, its ``compute_loss``), the loss of
Hugging Face's ``LlamaForCausalLM`` with ``num_items_in_batch`` (what the Trainer uses under gradient
accumulation), Hugging Face's ``neftune_post_forward_hook`` and ``generate``. The conversations are
rendered by the course tokenizer with Chapter 6's chat template, exactly as TRL renders them. Losses of
examples alone are written out with ``F.cross_entropy`` in float64.

Not graded (at the end): best-fit-decreasing bins against TRL's ``pack_dataset``, the course model on
packed rows, the loop (``finetune``) against TRL's ``SFTTrainer`` step for step, NEFTune in the loop,
the Accelerate configuration files and the TRL command line, 2 CPU processes (DDP, FSDP; slow) and the
cached fine-tuned model.

Each exercise's contract (its docstring), clause by clause, with the public tests that check it
(``test_`` dropped):

7.1 ``collate_chat``
  - TRL's assistant-only batch (its labels, then its collator): collate_chat_matches_trl_assistant_only_batch
  - right padding with ``pad_token_id``, attention mask 1/0, ``-100`` on prompt, markup and padding, torch.long,
    the input not modified: collate_chat_pads_on_the_right_with_the_given_id
  - the ``<|im_end|>`` closing each assistant turn is trained: collate_chat_trains_the_token_that_ends_each_assistant_turn
  - ``all_turns`` True and False (the last run of 1s only): collate_chat_trains_only_the_last_turn_when_asked
  - an example without a trained token is a row of ``-100``: collate_chat_of_a_conversation_without_assistant_tokens

7.2 ``pack_examples``
  - TRL's padding-free collator: pack_examples_matches_trl_padding_free_collator
  - positions restart per example, each example's first label ``-100``, one row ``(1, total)`` of torch.long, a
    one-token example, the input not modified: pack_examples_of_hand_made_examples
  - every example keeps the loss it has alone (Llama and the course model): packed_examples_keep_the_loss_they_have_alone

7.3 ``sft_loss``
  - ``"mean"``: Hugging Face's loss with ``num_items_in_batch`` over padded or packed micro-batches, not a mean of
    means: sft_loss_matches_hugging_face_with_num_items_in_batch, sft_loss_matches_trl_compute_loss
  - ``"none"`` per example (padded rows, packed examples by their positions) and ``"sum"``, in a mix:
    sft_loss_per_example_and_sum
  - a target counts only where the attention mask is 1: sft_loss_skips_padding_by_the_attention_mask
  - no target: NaN mean, 0 sum, NaN for that example: sft_loss_without_trained_targets
  - cross-entropy in float32, a float32 scalar for a bfloat16 model: sft_loss_of_a_bfloat16_model_is_computed_in_float32
  - the loss keeps its graph: sft_loss_keeps_the_graph_for_backward (a local run only: a graph cannot cross the
    grading door)

7.4 ``neftune_noise``
  - Hugging Face's hook after ``torch.manual_seed(seed)``, ``m = alpha / sqrt(seq * d_model)``, any shape:
    neftune_noise_matches_hugging_face_hook
  - dtype and shape kept, input unchanged, global random state untouched, same seed same noise, alpha 0 adds
    nothing, noise within ``[-m, m]``: neftune_noise_keeps_dtype_input_and_global_random_state

7.5 ``greedy_answers``
  - each answer what greedy ``generate`` gives for the prompt alone, cut before the first end id, prompts of
    different lengths, a list of end ids: greedy_answers_match_generate_one_prompt_at_a_time
  - one end id as an int, another pad id, ``max_new_tokens=1``: greedy_answers_with_one_end_id_and_one_token
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from course_lib.instruction_data import FAMILIES
from grading.expect import assert_close, in_process_only
from tests.test_generation import reference_mode

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]
IGNORE = -100

# Conversations beyond the single-turn data set: a system prompt and several assistant turns.
MULTI_TURN = [
    [{"role": "system", "content": "Answer with the answer alone."},
     {"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"},
     {"role": "user", "content": "And times 4?"}, {"role": "assistant", "content": "20"}],
    [{"role": "user", "content": "Reverse the word \"list\"."}, {"role": "assistant", "content": "tsil"},
     {"role": "user", "content": "In capitals?"}, {"role": "assistant", "content": "TSIL"},
     {"role": "user", "content": "First letter?"}, {"role": "assistant", "content": "T"}],
]


# -- data and references ---------------------------------------------------------------------------------
_MEMO: dict = {}


class Unavailable:
    """Stands for what :func:`memo` could not make (in the student's handout: the course tokenizer while
    an earlier chapter's exercise is still a stub). Any use raises that error inside the test that uses
    it, so the test fails with it instead of erroring in its fixture's setup."""

    def __init__(self, key: str, error: Exception):
        self._key, self._error = key, error

    def _fail(self, *args, **kwargs):
        raise RuntimeError(f"the test's {self._key} could not be made: {type(self._error).__name__}: "
                           f"{self._error}") from self._error

    def __getattr__(self, name):
        self._fail()

    __iter__ = __len__ = __getitem__ = __call__ = _fail


def memo(key, make):
    """``make()``, computed once per ``key``: the expected values of a test do not depend on the code
    under test, and the wrong variants rerun every test. What cannot be made is :class:`Unavailable`."""
    if key not in _MEMO:
        try:
            _MEMO[key] = make()
        except Exception as error:  # noqa: BLE001  (re-raised, with its cause, in every test that uses it)
            _MEMO[key] = Unavailable(key, error)
    return _MEMO[key]


@pytest.fixture(scope="module")
def chat_tokenizer():
    from course_lib.instruct import chat_tokenizer

    def make():
        with reference_mode():  # the course tokenizer (Chapter 1) by the reference, whatever is being graded
            return chat_tokenizer()

    return memo("chat tokenizer", make)


@pytest.fixture(scope="module")
def conversations():
    """Eight conversations of the instruction data set (two per family) and the multi-turn ones."""
    from course_lib.instruction_data import FAMILIES, instruction_dataset

    def make():
        with reference_mode():
            return [row["messages"] for family in FAMILIES
                    for row in instruction_dataset("train", family).select(range(2))] + MULTI_TURN

    return memo("conversations", make)


def rendered(tokenizer, conversation_list):
    """What the collator gets: ``input_ids`` and ``assistant_masks`` from the chat template."""
    out = []
    for messages in conversation_list:
        r = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        out.append({"input_ids": list(r["input_ids"]), "assistant_masks": list(r["assistant_masks"])})
    return out


def tiny_llama(device, vocab, seed=0, pad=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=pad, bos_token_id=1, eos_token_id=2, use_cache=False)
    return LlamaForCausalLM(config).to(device)


def tiny_course_lm(device, vocab, seed=0, **overrides):
    from course_lib.language_model import CourseLMForCausalLM, course_lm_config

    torch.manual_seed(seed)
    config = course_lm_config("cpu", **{"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 48,
                                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                        "max_position_embeddings": 256, **overrides})
    return CourseLMForCausalLM(config).to(device)


@pytest.fixture(scope="module")
def trl_sft(chat_tokenizer, conversations):
    """TRL's ``SFTTrainer`` (``assistant_only_loss=True``) on the conversations and a tiny Llama of the
    course tokenizer's vocabulary: ``(trainer, rows)`` with its prepared rows (``input_ids``, ``labels``)."""
    from datasets import Dataset
    from transformers.utils import logging
    from trl import SFTConfig, SFTTrainer

    def make():
        logging.set_verbosity_error()
        args = SFTConfig(output_dir=str(ROOT / "_build" / "trl-sft-test"), report_to="none", use_cpu=True, bf16=False,
                         assistant_only_loss=True, max_length=None, per_device_train_batch_size=4, seed=0,
                         save_strategy="no", disable_tqdm=True)
        model = tiny_llama("cpu", len(chat_tokenizer), pad=chat_tokenizer.pad_token_id)
        with reference_mode():
            trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"messages": conversations}),
                                 processing_class=chat_tokenizer)
        rows = [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in trainer.train_dataset]
        return trainer, rows

    return memo("trl sft", make)


def to_device(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def trl_padded(trl_sft, indices, device):
    """TRL's padded batch (its collator) of the prepared rows ``indices``."""
    trainer, rows = trl_sft
    return to_device(trainer.data_collator([rows[i] for i in indices]), device)


def trl_packed(trl_sft, indices, device):
    """TRL's padding-free batch of the prepared rows ``indices``: input_ids, position_ids, labels."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    trainer, rows = trl_sft
    batch = DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id, padding_free=True)(
        [rows[i] for i in indices])
    return to_device({k: batch[k] for k in ("input_ids", "position_ids", "labels")}, device)


def losses_alone(model, labelled, device):
    """Each labelled example's mean loss over its trained targets, run alone, in float64."""
    out = []
    with reference_mode(), torch.no_grad():
        for example in labelled:
            ids = torch.tensor([example["input_ids"]], device=device)
            logits = model(input_ids=ids, use_cache=False).logits.double()
            targets = torch.tensor(example["labels"][1:], device=device)
            out.append(F.cross_entropy(logits[0, :-1], targets, ignore_index=IGNORE).item())
    return torch.tensor(out, dtype=F64)


# -- 7.1 collate_chat --------------------------------------------------------------------------------------------
COLLATE_HINTS = {
    "input_ids": "input_ids are the examples' ids, padded on the right with pad_token_id to the longest example.",
    "attention_mask": "attention_mask is 1 on an example's tokens and 0 on the padding after them.",
    "labels": "labels are the token id where assistant_masks is 1 and -100 everywhere else (prompt, markup, "
              "padding); the <|im_end|> that closes an assistant turn is trained.",
}


def check_batch(actual, expected, what, hints=COLLATE_HINTS, wrong=None):
    if not isinstance(actual, dict) or set(actual) != set(expected):
        raise AssertionError(f"{what}: expected a dict with the keys {sorted(expected)}, got "
                             f"{sorted(actual) if isinstance(actual, dict) else type(actual).__name__}")
    for key in expected:
        assert_close(actual[key], expected[key].to(actual[key].device) if isinstance(actual[key], torch.Tensor)
                     else expected[key], what=f"{what}[{key!r}]", hint=hints[key], wrong=(wrong or {}).get(key))


@pytest.mark.exercise("7.1")
@pytest.mark.parametrize("indices", [[0, 1, 2, 3, 4], [2, 9, 6, 8]])
def test_collate_chat_matches_trl_assistant_only_batch(student, chat_tokenizer, conversations, trl_sft, indices):
    examples = rendered(chat_tokenizer, [conversations[i] for i in indices])
    got = student.collate_chat(examples, chat_tokenizer.pad_token_id)
    expected = trl_padded(trl_sft, indices, "cpu")
    check_batch(got, expected, f"collate_chat of conversations {indices} (TRL SFTTrainer with assistant_only_loss)",
                wrong={"labels": {"trained on every token (the prompt too)":
                                  expected["input_ids"].masked_fill(expected["attention_mask"] == 0, IGNORE)}})


@pytest.mark.exercise("7.1")
def test_collate_chat_pads_on_the_right_with_the_given_id(student):
    examples = [{"input_ids": [5, 6, 7], "assistant_masks": [0, 1, 1]},
                {"input_ids": [8, 9, 10, 11, 12], "assistant_masks": [0, 0, 1, 1, 0]},
                {"input_ids": [13], "assistant_masks": [0]}]
    expected = {"input_ids": torch.tensor([[5, 6, 7, 3, 3], [8, 9, 10, 11, 12], [13, 3, 3, 3, 3]]),
                "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]),
                "labels": torch.tensor([[IGNORE, 6, 7, IGNORE, IGNORE], [IGNORE, IGNORE, 10, 11, IGNORE],
                                        [IGNORE] * 5])}
    got = student.collate_chat(examples, pad_token_id=3)
    check_batch(got, expected, "collate_chat of three hand-made examples, pad_token_id=3",
                wrong={"input_ids": {"padded on the left": torch.tensor([[3, 3, 5, 6, 7], [8, 9, 10, 11, 12],
                                                                         [3, 3, 3, 3, 13]])}})
    assert examples[0] == {"input_ids": [5, 6, 7], "assistant_masks": [0, 1, 1]}, "collate_chat changed its input"


@pytest.mark.exercise("7.1")
def test_collate_chat_trains_the_token_that_ends_each_assistant_turn(student, chat_tokenizer, conversations):
    examples = rendered(chat_tokenizer, conversations)
    got = student.collate_chat(examples, chat_tokenizer.pad_token_id)
    im_end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, example in enumerate(examples):
        mask = example["assistant_masks"]
        ends = [t for t in range(len(mask)) if mask[t] and (t + 1 == len(mask) or not mask[t + 1])]
        for t in ends:
            assert example["input_ids"][t] == im_end   # the test itself: a turn's mask ends on <|im_end|>
            assert got["labels"][row, t].item() == im_end, (
                f"conversation {row}: the <|im_end|> at position {t} that ends an assistant turn has label "
                f"{got['labels'][row, t].item()}: train it (it is in the assistant mask), or the model never "
                "learns to stop")


@pytest.mark.exercise("7.1")
def test_collate_chat_trains_only_the_last_turn_when_asked(student, chat_tokenizer):
    examples = rendered(chat_tokenizer, MULTI_TURN)
    for all_turns in (True, False):
        got = student.collate_chat(examples, chat_tokenizer.pad_token_id, all_turns=all_turns)
        for row, example in enumerate(examples):
            mask = example["assistant_masks"]
            runs = [t for t in range(len(mask)) if mask[t] and (t == 0 or not mask[t - 1])]
            kept = mask if all_turns else [int(m and t >= runs[-1]) for t, m in enumerate(mask)]
            expected = torch.tensor([i if k else IGNORE for i, k in zip(example["input_ids"], kept)])
            assert_close(got["labels"][row, :len(mask)].cpu(), expected,
                         what=f"collate_chat(all_turns={all_turns}) labels of a conversation with {len(runs)} "
                              "assistant turns",
                         hint="all_turns=False trains the last assistant turn only (the last run of 1s of the "
                              "mask); all_turns=True every one.")


@pytest.mark.exercise("7.1")
def test_collate_chat_of_a_conversation_without_assistant_tokens(student):
    got = student.collate_chat([{"input_ids": [4, 5], "assistant_masks": [0, 0]},
                                {"input_ids": [6, 7, 8], "assistant_masks": [1, 1, 1]}], pad_token_id=0)
    assert_close(got["labels"], torch.tensor([[IGNORE, IGNORE, IGNORE], [6, 7, 8]]),
                 what="collate_chat labels when one conversation has no assistant token",
                 hint="such a row is all -100 (and padding is never trained)")


# -- 7.2 pack_examples ---------------------------------------------------------------------------------------------
PACK_HINTS = {
    "input_ids": "input_ids are the examples' ids one after the other, in one row of shape (1, total).",
    "position_ids": "position_ids count 0, 1, ... within each example and restart at 0 where the next one starts.",
    "labels": "labels are the examples' labels, with -100 at each example's first token (no example learns to "
              "predict the next one's first token).",
}


@pytest.mark.exercise("7.2")
@pytest.mark.parametrize("indices", [[0, 1, 2], [9, 3, 8]])
def test_pack_examples_matches_trl_padding_free_collator(student, trl_sft, indices):
    _, rows = trl_sft
    expected = trl_packed(trl_sft, indices, "cpu")
    got = student.pack_examples([rows[i] for i in indices])
    total = expected["input_ids"].shape[1]
    check_batch(got, expected, f"pack_examples of conversations {indices} (TRL's padding-free collator)",
                hints=PACK_HINTS,
                wrong={"position_ids": {"0 .. total - 1 without restarting": torch.arange(total)[None]}})


@pytest.mark.exercise("7.2")
@pytest.mark.parametrize("family", ["llama", "course"])
def test_packed_examples_keep_the_loss_they_have_alone(student, trl_sft, device, family):
    _, rows = trl_sft
    labelled = [rows[i] for i in (9, 0, 8, 5)]
    vocab = max(max(r["input_ids"]) for r in rows) + 1
    packed = to_device(student.pack_examples(labelled), device)
    model, alone = memo(("alone", str(device), family), lambda: (
        m := (tiny_llama if family == "llama" else tiny_course_lm)(device, vocab, seed=3).eval(),
        losses_alone(m, labelled, device)))
    with reference_mode(), torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
    starts = [0] + torch.tensor([len(r["input_ids"]) for r in labelled]).cumsum(0).tolist()
    got = torch.tensor([F.cross_entropy(logits[0, a:b - 1].double(), packed["labels"][0, a + 1:b],
                                        ignore_index=IGNORE).item() for a, b in zip(starts, starts[1:])], dtype=F64)
    assert_close(got, alone, rtol=1e-5, atol=1e-6,
                 what=f"the loss of each of 4 conversations packed in one row ({family} model) against alone",
                 hint="an example in a packed row attends to the examples before it unless its position_ids "
                      "restart at 0 (the model reads the restart as a new sequence)")


@pytest.mark.exercise("7.2")
def test_pack_examples_of_hand_made_examples(student):
    examples = [{"input_ids": [7, 8, 9], "labels": [IGNORE, 8, 9]}, {"input_ids": [4], "labels": [4]},
                {"input_ids": [5, 6], "labels": [5, 6]}]
    expected = {"input_ids": torch.tensor([[7, 8, 9, 4, 5, 6]]), "position_ids": torch.tensor([[0, 1, 2, 0, 0, 1]]),
                "labels": torch.tensor([[IGNORE, 8, 9, IGNORE, IGNORE, 6]])}
    check_batch(student.pack_examples(examples), expected, "pack_examples of examples of 3, 1 and 2 tokens",
                hints=PACK_HINTS)
    assert examples[1] == {"input_ids": [4], "labels": [4]}, "pack_examples changed its input"


# -- 7.3 sft_loss --------------------------------------------------------------------------------------------------
def hf_step_loss(model, micro_batches):
    """Hugging Face's loss of one accumulated step: the sum of each micro-batch's ``.loss`` with
    ``num_items_in_batch`` = the trained targets of the whole step (the Trainer's convention)."""
    n = sum(int((mb["labels"][:, 1:] != IGNORE).sum()) for mb in micro_batches)
    with reference_mode(), torch.no_grad():
        return sum(model(**mb, use_cache=False, num_items_in_batch=n).loss.double() for mb in micro_batches)


def step_case(trl_sft, device, family, packed):
    """A model and 3 micro-batches of TRL's, padded or packed."""
    def make():
        _, rows = trl_sft
        vocab = max(max(r["input_ids"]) for r in rows) + 1
        model = (tiny_llama if family == "llama" else tiny_course_lm)(device, vocab, seed=5).eval()
        batch = trl_packed if packed else trl_padded
        return model, [batch(trl_sft, [0, 1, 2, 3], device), batch(trl_sft, [9], device), batch(trl_sft, [4, 8], device)]

    return memo(("step", str(device), family, packed), make)


def step_expectation(trl_sft, device, family, packed):
    """Hugging Face's loss of :func:`step_case` as one step, and the mean of the examples' own means (a
    known mistake)."""
    def make():
        model, micro_batches = step_case(trl_sft, device, family, packed)
        rows = [trl_sft[1][i] for i in (0, 1, 2, 3, 9, 4, 8)]
        return hf_step_loss(model, micro_batches).float(), losses_alone(model, rows, device).mean().float()

    return memo(("step expectation", str(device), family, packed), make)


LOSS_HINT = ("The mean is the sum of the losses of every trained target of every micro-batch divided by their "
             "number: not a mean of per-micro-batch or per-example means.")


@pytest.mark.exercise("7.3")
@pytest.mark.parametrize("family, packed", [("llama", False), ("course", True)])
def test_sft_loss_matches_hugging_face_with_num_items_in_batch(student, trl_sft, device, family, packed):
    model, micro_batches = step_case(trl_sft, device, family, packed)
    got = student.sft_loss(model, micro_batches).detach()
    expected, example_means = step_expectation(trl_sft, device, family, packed)
    assert_close(got, expected, rtol=1e-5,
                 what=f"sft_loss of 3 {'packed' if packed else 'padded'} micro-batches ({family} model)",
                 hint=LOSS_HINT + (" A packed micro-batch goes to the model with its position_ids and no attention "
                                   "mask (and use_cache=False)." if packed else ""),
                 wrong={"a mean of per-example means": example_means})


@pytest.mark.exercise("7.3")
def test_sft_loss_matches_trl_compute_loss(student, trl_sft):
    trainer, _ = trl_sft
    micro_batches = [trl_padded(trl_sft, [0, 1, 5], "cpu"), trl_padded(trl_sft, [9, 4], "cpu")]

    def make():
        n = sum(int((mb["labels"][:, 1:] != IGNORE).sum()) for mb in micro_batches)
        trainer.model.eval()
        with torch.no_grad():
            return sum(trainer.compute_loss(trainer.model, dict(mb), num_items_in_batch=n).double()
                       for mb in micro_batches)

    model = memo("trl model", lambda: copy.deepcopy(trainer.model).eval())
    got = student.sft_loss(model, micro_batches).detach()
    expected = memo("trl compute_loss", make)
    assert_close(got, expected.float(), rtol=1e-5,
                 what="sft_loss of 2 padded micro-batches against TRL's SFTTrainer.compute_loss", hint=LOSS_HINT)


@pytest.mark.exercise("7.3")
def test_sft_loss_per_example_and_sum(student, trl_sft, device):
    _, rows = trl_sft
    vocab = max(max(r["input_ids"]) for r in rows) + 1
    order = [2, 9, 4, 7, 0]
    model = memo(("per example", str(device)), lambda: tiny_course_lm(device, vocab, seed=6).eval())
    micro_batches = [trl_padded(trl_sft, [2, 9], device), trl_packed(trl_sft, [4, 7, 0], device)]
    with torch.no_grad():
        none = student.sft_loss(model, micro_batches, reduction="none")
        total = student.sft_loss(model, micro_batches, reduction="sum")
    alone = memo(("per example alone", str(device)), lambda: losses_alone(model, [rows[i] for i in order], device))
    assert_close(none, alone.float(), rtol=1e-5, atol=1e-6,
                 what="sft_loss(reduction='none') of a padded micro-batch of 2 and a packed one of 3 examples",
                 hint="one mean loss per example, in order: each row of a padded micro-batch, and each example of a "
                      "packed row (a new one starts where position_ids is 0)")
    counts = torch.tensor([sum(t != IGNORE for t in rows[i]["labels"][1:]) for i in order], dtype=F64)
    assert_close(total, (alone * counts).sum().float(), rtol=1e-5, what="sft_loss(reduction='sum')",
                 hint="the sum of the losses of every trained target")


@pytest.mark.exercise("7.3")
def test_sft_loss_of_a_bfloat16_model_is_computed_in_float32(student, trl_sft, device):
    model, micro_batches = step_case(trl_sft, device, "llama", False)
    model = memo(("bf16 model", str(device)), lambda: copy.deepcopy(model).to(torch.bfloat16))
    got = student.sft_loss(model, micro_batches)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.dim() == 0, (
        f"sft_loss of a bfloat16 model returned {getattr(got, 'dtype', type(got))} of shape "
        f"{tuple(getattr(got, 'shape', ()))}: a float32 scalar")
    expected = memo(("bf16 loss", str(device)), lambda: hf_step_loss(model, micro_batches).float())
    assert_close(got.detach(), expected, rtol=1e-5, what="sft_loss of a bfloat16 model's 3 padded micro-batches",
                 hint="Compute each target's cross-entropy in float32 (logits.float() first), as Hugging Face does.")


@pytest.mark.exercise("7.3")
def test_sft_loss_keeps_the_graph_for_backward(student, trl_sft, device):
    in_process_only(student, "a loss with its autograd graph")
    model, micro_batches = step_case(trl_sft, device, "llama", False)
    model = copy.deepcopy(model)
    loss = student.sft_loss(model, micro_batches)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad, \
        "sft_loss must return the loss with its graph (no .item(), no torch.no_grad(), no .detach())"
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"after sft_loss(...).backward() these parameters have no gradient: {missing[:5]}"


@pytest.mark.exercise("7.3")
def test_sft_loss_skips_padding_by_the_attention_mask(student, device):
    model = tiny_course_lm(device, 40, seed=7).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]], device=device)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], device=device)
    with_pad_labels = {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}   # labels not -100 at padding
    clean = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE)}
    got = student.sft_loss(model, [with_pad_labels]).detach()
    assert_close(got, hf_step_loss(model, [clean]).float(), rtol=1e-5,
                 what="sft_loss when the labels are not -100 at padding",
                 hint="a target whose attention_mask is 0 is padding and is not counted")


@pytest.mark.exercise("7.3")
def test_sft_loss_without_trained_targets(student, device):
    model = tiny_course_lm(device, 40, seed=8).eval()
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]], device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.tensor([[IGNORE, IGNORE, IGNORE], [IGNORE, 9, 10]], device=device)}
    none = student.sft_loss(model, [batch], reduction="none").detach()
    assert none.shape == (2,) and math.isnan(none[0].item()) and not math.isnan(none[1].item()), (
        f"sft_loss(reduction='none') with a row without trained targets gave {none.tolist()}: "
        "expected NaN for that row (0/0) and a number for the other")
    empty = {**batch, "labels": torch.full_like(ids, IGNORE)}
    assert student.sft_loss(model, [empty], reduction="sum").item() == 0.0, "the sum over no targets is 0"
    assert math.isnan(student.sft_loss(model, [empty]).item()), "the mean over no targets is NaN (0/0)"


# -- 7.4 neftune_noise ------------------------------------------------------------------------------------------------
def hf_neftune(embeddings, alpha, seed):
    """Hugging Face's NEFTune hook on ``embeddings`` in training mode, after ``torch.manual_seed(seed)``."""
    from transformers.integrations.neftune import neftune_post_forward_hook

    module = torch.nn.Module()
    module.neftune_noise_alpha = alpha
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return neftune_post_forward_hook(module.train(), None, embeddings)
    finally:
        torch.random.set_rng_state(state)


@pytest.mark.exercise("7.4")
@pytest.mark.parametrize("shape, alpha, seed", [((2, 7, 16), 5.0, 0), ((1, 30, 64), 15.0, 3), ((4, 1, 8), 10.0, 11)])
def test_neftune_noise_matches_hugging_face_hook(student, shape, alpha, seed):
    embeddings = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 100))
    expected = hf_neftune(embeddings, alpha, seed)
    batch, seq, d = shape
    uniform = torch.zeros(shape).uniform_(-1, 1, generator=torch.Generator().manual_seed(seed))
    wrong = {"noise scaled by alpha / sqrt(seq), without d_model": embeddings + uniform * alpha / math.sqrt(seq),
             "noise scaled by alpha / sqrt(batch * seq * d_model)": embeddings + uniform * alpha / math.sqrt(
                 batch * seq * d),
             "Gaussian noise": embeddings + torch.randn(shape, generator=torch.Generator().manual_seed(seed))
             * alpha / math.sqrt(seq * d)}
    assert_close(student.neftune_noise(embeddings, alpha, seed), expected, rtol=1e-5, atol=1e-6,
                 what=f"neftune_noise of {shape} embeddings, alpha={alpha}, seed={seed}",
                 hint="noise uniform in [-m, m], m = alpha / sqrt(seq * d_model), drawn with "
                      "torch.zeros_like(e).uniform_(-m, m, generator=torch.Generator().manual_seed(seed))",
                 wrong=wrong)


@pytest.mark.exercise("7.4")
def test_neftune_noise_keeps_dtype_input_and_global_random_state(student):
    embeddings = torch.randn(2, 5, 8).to(torch.bfloat16)
    before, state = embeddings.clone(), torch.random.get_rng_state()
    got = student.neftune_noise(embeddings, 5.0, 4)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.bfloat16 and got.shape == embeddings.shape, (
        f"neftune_noise of bfloat16 embeddings returned {getattr(got, 'dtype', type(got))}: keep the shape and dtype")
    assert torch.equal(embeddings, before), "neftune_noise changed its input in place"
    assert torch.equal(torch.random.get_rng_state(), state), (
        "neftune_noise used the global random generator: draw from a torch.Generator seeded with seed")
    again = student.neftune_noise(embeddings, 5.0, 4)
    assert torch.equal(got, again), "the same seed must give the same noise"
    assert torch.equal(student.neftune_noise(embeddings, 0.0, 4), embeddings), "alpha=0 adds no noise"
    bound = 5.0 / math.sqrt(5 * 8)
    noise = (student.neftune_noise(embeddings.float(), 5.0, 4) - embeddings.float()).abs()
    assert noise.max() <= bound * (1 + 1e-6) and noise.max() > 0.8 * bound, (
        f"the noise reaches {noise.max():.4f}; it is uniform in [-m, m] with m = {bound:.4f}")


# -- 7.5 greedy_answers -----------------------------------------------------------------------------------------------
def generate_alone(model, prompt, eos, pad, max_new_tokens):
    """Greedy ``generate`` of one prompt (no padding), cut before its first end id."""
    ids = torch.tensor([prompt], device=next(model.parameters()).device)
    with reference_mode(), torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=eos, pad_token_id=pad)[0, len(prompt):].tolist()
    ends = [i for i, t in enumerate(out) if t in eos]
    return out[:ends[0]] if ends else out


def answer_setup(device, seed):
    """A small course model, prompts of different lengths and end ids that are tokens this model writes
    (so that the answers stop at different places)."""
    def make():
        model = tiny_llama(device, 48, seed=seed).eval()   # no earlier chapter's code: the stub is what fails
        gen = torch.Generator().manual_seed(seed)
        prompts = [torch.randint(3, 48, (n,), generator=gen).tolist() for n in (6, 2, 9, 4, 1)]
        free = [generate_alone(model, p, [1], 0, 8) for p in prompts]    # id 1 is never written: no stop
        return model, prompts, sorted({free[0][3], free[2][1]} - {0})

    return memo(("answers", str(device), seed), make)


def expected_answers(device, seed, eos, pad, max_new_tokens):
    model, prompts, _ = answer_setup(device, seed)
    return memo(("answers", str(device), seed, tuple(eos), pad, max_new_tokens),
                lambda: [generate_alone(model, p, list(eos), pad, max_new_tokens) for p in prompts])


@pytest.mark.exercise("7.5")
@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_answers_match_generate_one_prompt_at_a_time(student, device, seed):
    model, prompts, eos = answer_setup(device, seed)
    got = student.greedy_answers(model, prompts, pad_token_id=0, eos_token_id=eos, max_new_tokens=8)
    expected = expected_answers(device, seed, eos, 0, 8)
    assert any(len(e) < 8 for e in expected) and any(len(e) == 8 for e in expected)  # the test itself
    assert isinstance(got, list) and all(isinstance(a, list) for a in got), \
        f"greedy_answers must return a list of lists of ints, got {type(got).__name__}"
    for i, (a, e) in enumerate(zip(got, expected)):
        assert a == e, (f"prompt {i} (length {len(prompts[i])}): got {a}, expected {e} (generate alone, cut before "
                        f"the end ids {eos}). Pad prompts on the left, return only the new tokens and stop before "
                        "the first end id.")
    assert len(got) == len(prompts), f"{len(got)} answers for {len(prompts)} prompts"


@pytest.mark.exercise("7.5")
def test_greedy_answers_with_one_end_id_and_one_token(student, device):
    model, prompts, eos = answer_setup(device, 2)
    got = student.greedy_answers(model, prompts, pad_token_id=5, eos_token_id=eos[0], max_new_tokens=1)
    expected = expected_answers(device, 2, eos[:1], 5, 1)
    assert got == expected, (f"greedy_answers(max_new_tokens=1, eos_token_id={eos[0]}) gave {got}, expected "
                             f"{expected}: at most one new token, none if it is the end id")


# -- the course's pieces around the exercises (not graded) -------------------------------------------------------------
def test_best_fit_decreasing_bins_like_trl_pack_dataset():
    from datasets import Dataset
    from trl import pack_dataset

    from course_lib.sft import best_fit_decreasing

    gen = torch.Generator().manual_seed(0)
    for capacity, n in ((16, 40), (64, 200), (7, 30)):
        lengths = torch.randint(1, capacity + 1, (n,), generator=gen).tolist()
        data = Dataset.from_dict({"input_ids": [[i] * length for i, length in enumerate(lengths)]})
        packed = pack_dataset(data, capacity, "bfd", {"batch_size": n})
        theirs = [list(dict.fromkeys(row)) for row in packed["input_ids"]]
        assert best_fit_decreasing(lengths, capacity) == theirs


def test_course_model_keeps_packed_sequences_apart(device):
    for implementation in ("eager", "sdpa"):
        model = tiny_course_lm(device, 50, seed=1, attn_implementation=implementation).eval()
        a, b = torch.randint(0, 50, (1, 5), device=device), torch.randint(0, 50, (1, 7), device=device)
        positions = torch.cat([torch.arange(5), torch.arange(7)])[None].to(device)
        with torch.no_grad():
            packed = model(input_ids=torch.cat([a, b], 1), position_ids=positions).logits
            alone = torch.cat([model(input_ids=a).logits, model(input_ids=b).logits], 1)
            unpacked = model(input_ids=torch.cat([a, b], 1)).logits
        assert torch.allclose(packed, alone, atol=1e-5), implementation
        assert not torch.allclose(unpacked[:, 5:], alone[:, 5:], atol=1e-3)  # without the restart, b sees a


def test_train_steps_on_packed_rows_equals_padded_rows(device):
    """Chapter 5's loop takes SFT batches unchanged: a step on a packed row equals a step on the same
    examples padded (same loss, same update), through the position_ids it passes to the model."""
    from course_lib import exercises
    from course_lib.pretraining import train_steps
    from course_lib.sft import collate_chat, labelled_examples, pack_examples

    if not exercises.uses_reference("sft") or not exercises.uses_reference("pretraining"):
        pytest.skip("runs the reference solutions (--against solution)")
    examples = [{"input_ids": [5, 6, 7, 8], "assistant_masks": [0, 0, 1, 1]},
                {"input_ids": [9, 10, 11, 12, 13, 14], "assistant_masks": [0, 1, 1, 0, 1, 1]}]
    settings = {"lr": 1e-2, "warmup_steps": 0, "total_steps": 2, "min_lr_ratio": 0.0, "weight_decay": 0.0,
                "betas": [0.9, 0.95], "eps": 1e-8, "max_grad_norm": None, "mixed_precision": "no"}
    padded = [[to_device(collate_chat(examples, 0), device)]] * 2
    packed = [[to_device(pack_examples(labelled_examples(examples)), device)]] * 2
    model = tiny_course_lm(device, 20, seed=2)
    a = train_steps(copy.deepcopy(model), padded, settings)
    b = train_steps(copy.deepcopy(model), packed, settings)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


@pytest.fixture(scope="module")
def reference_loop():
    """Skips unless the chapter's exercises run the reference solutions (the loop calls them)."""
    from course_lib import exercises

    if not (exercises.uses_reference("sft") and exercises.uses_reference("pretraining")):
        pytest.skip("the loop's tests run in solution mode (--against solution or COURSE_LIB_MODE=solution)")


def trl_run(trl_sft, chat_tokenizer, conversations, packing, steps=3):
    """TRL's SFTTrainer (assistant-only loss, sequential order) for ``steps`` steps of 2 micro-batches of 2
    rows on a fresh tiny Llama: its per-step loss and gradient norm."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(ROOT / "_build" / "trl-sft-test"), report_to="none", use_cpu=True, bf16=False,
                     assistant_only_loss=True, packing=packing, padding_free=packing, max_length=64,
                     per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=steps,
                     learning_rate=1e-2, lr_scheduler_type="cosine", warmup_steps=1, weight_decay=0.0,
                     adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0, logging_steps=1,
                     train_sampling_strategy="sequential", seed=0, save_strategy="no", disable_tqdm=True)
    model = tiny_llama("cpu", len(chat_tokenizer), pad=chat_tokenizer.pad_token_id)
    with reference_mode():
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"messages": conversations}),
                             processing_class=chat_tokenizer)
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return [float(e["loss"]) for e in logs], [float(e["grad_norm"]) for e in logs]


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True])
def test_the_loop_matches_trl_sft_trainer_step_for_step(reference_loop, trl_sft, chat_tokenizer, conversations,
                                                        packing):
    """The course's step (Chapter 5's train_steps on collate_chat or pack_examples batches) and TRL's
    SFTTrainer give the same loss and gradient norm at every step, padded and padding-free."""
    from course_lib.pretraining import train_steps
    from course_lib.sft import best_fit_decreasing, collate_chat, labelled_examples, pack_examples

    if packing:   # twice the conversations: enough bins for three steps of two micro-batches of two bins
        conversations = conversations + conversations
    losses, norms = trl_run(trl_sft, chat_tokenizer, conversations, packing)
    assert len(losses) == 3, losses
    examples = rendered(chat_tokenizer, conversations)
    if packing:   # TRL's bins of at most 64 tokens, 2 bins per micro-batch, flattened into one row
        bins = best_fit_decreasing([len(e["input_ids"]) for e in examples], 64)
        rows = [[examples[i] for i in b] for b in bins]
        micro = [pack_examples(labelled_examples(rows[i] + rows[i + 1] if i + 1 < len(rows) else rows[i]))
                 for i in range(0, len(rows), 2)]
    else:
        micro = [collate_chat(examples[i:i + 2], chat_tokenizer.pad_token_id) for i in range(0, len(examples), 2)]
    steps = [micro[i:i + 2] for i in range(0, 2 * len(losses), 2)]
    settings = {"lr": 1e-2, "warmup_steps": 1, "total_steps": len(losses), "min_lr_ratio": 0.0, "weight_decay": 0.0,
                "betas": [0.9, 0.95], "eps": 1e-8, "max_grad_norm": 1.0, "mixed_precision": "no"}
    history = train_steps(tiny_llama("cpu", len(chat_tokenizer), pad=chat_tokenizer.pad_token_id), steps, settings)
    assert history["loss"] == pytest.approx(losses, rel=1e-4), (history["loss"], losses)
    assert history["grad_norm"] == pytest.approx(norms, rel=1e-4), (history["grad_norm"], norms)


def test_training_rows_take_what_train_examples_gives_each_family():
    from course_lib.sft import preset, training_rows

    rows = training_rows(preset("tiny", train_examples={"naming": 3, "sorting": 2}))
    assert [row["family"] for row in rows] == ["sorting"] * 2 + ["naming"] * 3   # FAMILIES order, others left out
    assert [row["family"] for row in training_rows(preset("tiny", train_examples=2))] == [
        family for family in FAMILIES for _ in range(2)]
    with pytest.raises(ValueError, match="poetry"):
        training_rows(preset("tiny", train_examples={"poetry": 1}))
    for bad in (-1, 2.5, {"naming": -3}):
        with pytest.raises(ValueError, match="train_examples"):
            training_rows(preset("tiny", train_examples=bad))


def test_finetune_lowers_the_validation_loss_and_records_accuracy(reference_loop):
    from course_lib.sft import finetune, preset

    config = preset("tiny")
    result = finetune(config, progress=False)
    history = result.history
    assert history["step"] == list(range(1, config.total_steps + 1))
    assert history["eval_step"] == [0, 3, 6]
    assert history["eval_loss"][-1] < history["eval_loss"][0] - 0.2
    assert all(set(a) == set(FAMILIES) and all(0 <= v <= 1 for v in a.values())
               for a in history["eval_accuracy"])
    assert result.padding_share == 0.0 and result.tokens_per_second > 0    # packed: no padding at all
    padded = finetune(preset("tiny", packing=False, total_steps=2, eval_every=2), progress=False)
    positions, tokens = sum(padded.history["positions"]), sum(padded.history["tokens"])
    assert positions > tokens and padded.padding_share == pytest.approx(1 - tokens / positions)


def test_neftune_adds_noise_while_training_only(reference_loop):
    from course_lib.sft import add_neftune

    model = tiny_course_lm("cpu", 40, seed=3)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        clean_train, clean_eval = model.train()(input_ids=ids).logits, model.eval()(input_ids=ids).logits
        handle = add_neftune(model, 5.0, seed=1)
        noisy = [model.train()(input_ids=ids).logits for _ in range(2)]
        evaluated = model.eval()(input_ids=ids).logits
        handle.remove()
        after = model.train()(input_ids=ids).logits
    assert not torch.allclose(noisy[0], clean_train) and not torch.allclose(noisy[0], noisy[1])  # new noise per call
    assert torch.equal(evaluated, clean_eval) and torch.equal(after, clean_train)


def test_accelerate_configuration_files_load():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    for name, kind in expected.items():
        config = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
        assert config.distributed_type.value == kind, name
    assert load_config_from_file(str(ROOT / "configs/accelerate/fsdp.yaml")).fsdp_config["fsdp_version"] == 2
    for stage in (2, 3):
        assert load_config_from_file(str(ROOT / f"configs/accelerate/deepspeed_zero{stage}.yaml")
                                     ).deepspeed_config["zero_stage"] == stage


def test_the_trl_command_line_of_the_cpu_preset_parses(tmp_path):
    from trl.scripts.sft import make_parser

    from course_lib.sft import preset, trl_command

    command = trl_command(preset("cpu"), tmp_path / "run")
    assert command[:2] == ["trl", "sft"]
    script, training, model, _ = make_parser().parse_args_and_config(command[2:])
    config = preset("cpu")
    assert training.assistant_only_loss and training.packing and training.padding_free
    assert (training.max_length, training.max_steps, training.learning_rate) == (config.pack_length,
                                                                                   config.total_steps, config.lr)
    assert training.per_device_train_batch_size == config.micro_batch_size
    assert training.lr_scheduler_kwargs == {"min_lr_rate": config.min_lr_ratio}


@pytest.fixture(scope="module")
def two_cpu_processes(reference_loop):
    """``tests/sft_fsdp_cpu.py`` under ``torchrun`` with 2 CPU processes (gloo): the JSON lines rank 0
    printed (the command line's summary, then FSDP against data parallel)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))   # the children inherit the course_lib mode
    # accelerate launch starts several CPU processes only through mpirun; torchrun sets the same
    # environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) that Accelerator reads.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "tests" / "sft_fsdp_cpu.py")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_finetune_with_two_cpu_processes(two_cpu_processes):
    summary = two_cpu_processes[0]
    assert summary["processes"] == 2 and summary["distributed_type"] == "MULTI_CPU"
    assert summary["eval_loss"][-1] < summary["eval_loss"][0] and all(map(math.isfinite, summary["loss"]))


@pytest.mark.slow
def test_the_step_under_fsdp_on_two_cpu_processes_equals_data_parallel(two_cpu_processes):
    result = two_cpu_processes[-1]
    assert result["processes"] == 2 and result["sharded"]
    for key in ("loss", "grad_norm"):
        assert result["fsdp"][key] == pytest.approx(result["ddp"][key], rel=1e-4), key


def test_fine_tuned_model_loads_with_auto_classes_and_chats(reference_loop):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from course_lib.sft import end_token_ids, preset, sft_course_lm, sft_model_dir

    # The "cpu" model: the book build makes it (scripts/build_book.sh), so in a CI run this is a lookup.
    model, tokenizer = sft_course_lm("cpu", progress=False)
    directory = sft_model_dir("cpu")
    again, auto_tokenizer = AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    messages = [{"role": "user", "content": "What is 2 plus 3?"}]
    prompt = auto_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
    assert auto_tokenizer.decode(prompt["input_ids"][0]).endswith("<|im_start|>assistant\n")
    assert list(model.generation_config.eos_token_id) == end_token_ids(auto_tokenizer)
    out = again.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= prompt["input_ids"].shape[1] + 4
    record = json.loads((directory / "training.json").read_text())
    assert set(record["test"]["fine_tuned"]) == set(record["test"]["few_shot_base"]) == set(FAMILIES)
    assert record["test"]["examples"] == len(FAMILIES) * preset("cpu").test_examples


def test_bad_input_gets_an_error_naming_the_argument():
    from course_lib import sft

    model = torch.nn.Linear(2, 2)
    calls = [
        (lambda: sft.collate_chat([], 0), ValueError, "examples"),
        (lambda: sft.collate_chat([{"input_ids": [1, 2], "assistant_masks": [1]}], 0), ValueError, "assistant_masks"),
        (lambda: sft.collate_chat([{"input_ids": [1], "assistant_masks": [2]}], 0), ValueError, "assistant_masks"),
        (lambda: sft.collate_chat([{"input_ids": [1], "assistant_masks": [1]}], -1), ValueError, "pad_token_id"),
        (lambda: sft.pack_examples([{"input_ids": [1, 2], "labels": [1, -5]}]), ValueError, "labels"),
        (lambda: sft.sft_loss(model, [{"input_ids": torch.zeros(2, 3, dtype=torch.long)}]), TypeError, "labels"),
        (lambda: sft.sft_loss(model, [{"input_ids": torch.zeros(1, 3, dtype=torch.long),
                                       "labels": torch.zeros(1, 3, dtype=torch.long)}], "max"), ValueError, "reduction"),
        (lambda: sft.neftune_noise(torch.zeros(2, 3), 5.0, 0), ValueError, "embeddings"),
        (lambda: sft.neftune_noise(torch.zeros(1, 2, 3), -1.0, 0), ValueError, "alpha"),
        (lambda: sft.greedy_answers(model, [[]], pad_token_id=0, eos_token_id=1, max_new_tokens=2), ValueError,
         "prompts"),
        (lambda: sft.greedy_answers(model, [[1]], pad_token_id=0, eos_token_id=[], max_new_tokens=2), TypeError,
         "eos_token_id"),
    ]
    for call, error, name in calls:
        with pytest.raises(error, match=name):
            call()
