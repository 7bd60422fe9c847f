"""Chapter 9 graded tests (public): log-probabilities of completions, the reward model's output and loss,
DPO and its variants, and the pieces of PPO and GRPO.

The references are outside the course: TRL 1.16 (``selective_log_softmax``, ``entropy_from_logits`` and
``nanstd``; ``DPOTrainer.compute_loss`` with each loss type the course implements, its loss and logged
rewards, margins and accuracies; ``RewardTrainer.compute_loss`` with and without margins, and its accuracy;
``GRPOTrainer._compute_loss`` with each loss type, the KL term and its importance correction), the loss of
Hugging Face's ``LlamaForCausalLM`` and the pooled output of ``LlamaForSequenceClassification``. TRL has no
PPO trainer any more: generalised advantage estimation is held against a reference written out here
sequence by sequence in float64, and the PPO losses against hand-computed cases (the clip active and
inactive on both signs of the advantage). The models are tiny ``transformers`` Llamas with the course
tokenizer's vocabulary.

Each exercise's contract (its docstring), clause by clause, with the public tests that check it
(``test_`` dropped). The tests of gradients run the exercise through its ``*_outputs`` entry point, which
reports which outputs carry a gradient and the gradients themselves.

9.1 ``per_token_log_probs``
  - TRL's ``selective_log_softmax``, any leading dimensions, a temperature: per_token_log_probs_matches_trl
  - float32 from bfloat16 logits (computed in float32), the inputs not modified:
    per_token_log_probs_of_bfloat16_logits_is_float32

9.2 ``sequence_log_probs``
  - the sum over the completion's tokens, shifted by one, is minus Hugging Face's loss on those tokens times
    their count; ``average`` its mean: sequence_log_probs_is_minus_the_hugging_face_loss_of_the_completion
  - TRL's logged ``logps/chosen`` and ``logps/rejected``: sequence_log_probs_matches_trl_dpo_logps
  - neither the prompt nor the padding counts, whatever the padding holds, float32 for bfloat16 logits:
    sequence_log_probs_reads_only_the_completion

9.3 ``last_token_rewards``
  - ``LlamaForSequenceClassification``'s pooled score, right and left padding:
    last_token_rewards_matches_llama_for_sequence_classification
  - the scores' dtype, a one-token row, the inputs not modified: last_token_rewards_of_hand_made_masks

9.4 ``reward_loss``
  - TRL's ``RewardTrainer`` loss and accuracy on the same model and pairs, with and without margins:
    reward_loss_matches_trl_reward_trainer
  - exact for large differences, a tie counts as wrong, float32 from bfloat16, gradients
    ``-sigmoid(-(c - r - m)) / n`` to the chosen and the opposite to the rejected:
    reward_loss_of_hand_made_pairs

9.5 ``dpo_loss``
  - TRL's ``DPOTrainer`` on the same model, reference and pairs: its loss (the mean of ``losses``) and its
    logged rewards, margins and accuracies, for ``"sigmoid"``, ``"hinge"``, ``"ipo"`` and ``"robust"``:
    dpo_loss_matches_trl_dpo_trainer
  - conservative DPO's label smoothing, written out: dpo_loss_with_label_smoothing_is_conservative_dpo
  - ``losses`` carry gradients (``-beta sigmoid(-beta h)`` to the chosen), rewards detached, a tie counts as
    wrong: dpo_loss_gradients_and_rewards

9.6 ``masked_whiten``
  - zero mean and unit (Bessel) variance over the mask, 0 outside it whatever is there, ``shift_mean=False``
    keeps the mean, the dtype, the inputs not modified: masked_whiten_over_the_mask_only

9.7 ``gae``
  - a reference written out sequence by sequence, for several ``gamma`` and ``lam``, sequences that finish
    early with garbage after their end; returns ``advantages + values``, 0 past the end:
    gae_matches_a_reference_written_out
  - a hand-computed case; no gradients on the outputs: gae_of_a_hand_computed_case

9.8 ``kl_penalized_rewards``
  - ``-kl_coef (logprobs - ref)`` on every generated token, the score added at each row's last, 0 after,
    no gradients: kl_penalized_rewards_puts_the_score_on_the_last_token

9.9 ``ppo_policy_loss``
  - hand-computed tokens with the clip active and inactive on both signs of the advantage: the loss, its
    gradient (zero where the clip is active), the clip fraction and the approximate KL:
    ppo_policy_loss_clips_pessimistically_on_both_signs
  - a token-weighted mean over sequences of different lengths: ppo_policy_loss_averages_over_tokens

9.10 ``ppo_value_loss``
  - hand-computed predictions inside and outside the clip range: the loss, its gradient and the clip
    fraction: ppo_value_loss_takes_the_larger_error

9.11 ``masked_entropy``
  - TRL's ``entropy_from_logits`` averaged over the mask, float32 from bfloat16, ``log V`` for uniform
    logits: masked_entropy_matches_trl

9.12 ``grpo_advantages``
  - TRL's formula (its ``nanstd``, ``+ 1e-4``) for ``"group"``, ``"batch"`` and ``"none"``; a group of equal
    rewards gets 0: grpo_advantages_matches_trl

9.13 ``grpo_loss``
  - TRL's ``GRPOTrainer._compute_loss`` on the same log-probabilities, for ``"grpo"``, ``"bnpo"`` and
    ``"dr_grpo"``, with and without the KL term, with its importance correction and an ``epsilon_high``: the
    loss and the logged KL: grpo_loss_matches_trl
  - the gradient is not zero when the ratio is 1 (one update per sample): grpo_loss_gradient_on_policy
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from grading.expect import assert_close, assert_unchanged
from tests.test_generation import reference_mode, solution_mode  # noqa: F401  (a fixture)
from tests.test_sft import ROOT, chat_tokenizer, memo, tiny_llama  # noqa: F401  (chat_tokenizer: a fixture)

F64 = torch.float64


def randn(seed, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def prefix_mask(lengths, T):
    """``(len(lengths), T)`` of 1s for the first ``lengths[b]`` positions of each row, float32."""
    return (torch.arange(T) < torch.tensor(lengths).unsqueeze(1)).float()


# -- models and references ---------------------------------------------------------------------------------
PAIRS = {"prompt": ["What is 12 plus 30?", "Reverse the word \"lion\".", "Sort these: pear apple fig"],
         "chosen": [" 42", " noil", " apple fig pear"],
         "rejected": [" 41 or so", " lion lion", " pear"]}


def policy_and_reference(vocab, pad):
    """A tiny Llama (the reference) and a copy of it moved a little (the policy)."""
    reference = tiny_llama("cpu", vocab, seed=3, pad=pad)
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * randn(int(p.numel()) % 1000, *p.shape))
    return policy, reference


def trl_dpo(chat_tokenizer, loss_type, beta, label_smoothing):
    """TRL's ``DPOTrainer`` on :data:`PAIRS`, one batch of the three pairs: the trainer's loss and logged metrics,
    the batch (chosen rows then rejected rows), the policy and the reference."""
    from datasets import Dataset
    from transformers.utils import logging
    from trl import DPOConfig, DPOTrainer

    def make():
        logging.set_verbosity_error()
        policy, reference = policy_and_reference(len(chat_tokenizer), chat_tokenizer.pad_token_id)
        args = DPOConfig(output_dir=str(ROOT / "_build" / "trl-dpo-test"), report_to="none", use_cpu=True, bf16=False,
                         beta=beta, loss_type=[loss_type], label_smoothing=label_smoothing,
                         per_device_train_batch_size=3, save_strategy="no", disable_tqdm=True)
        with reference_mode():
            trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_dict(PAIRS),
                                 processing_class=chat_tokenizer)
            batch = next(iter(trainer.get_train_dataloader()))
            with torch.no_grad():
                loss = trainer.compute_loss(policy, batch)
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        return {"loss": float(loss), "metrics": metrics, "batch": batch, "policy": policy, "reference": reference}

    return memo(("trl dpo", loss_type, beta, label_smoothing), make)


def completion_logps(model, batch):
    """Each row's completion log-probability (sum) and its token count, written out with Hugging Face's loss."""
    sums, counts = [], []
    for ids, attention, completion in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        labels = ids.masked_fill(completion == 0, -100).unsqueeze(0)
        with torch.no_grad():
            loss = model(input_ids=ids.unsqueeze(0), attention_mask=attention.unsqueeze(0), labels=labels).loss
        count = int(completion[1:].sum())
        sums.append(-float(loss) * count)
        counts.append(count)
    return torch.tensor(sums), torch.tensor(counts)


# -- 9.1 per_token_log_probs ---------------------------------------------------------------------------------
@pytest.mark.exercise("9.1")
@pytest.mark.parametrize("shape, temperature", [((2, 5, 11), 1.0), ((3, 2, 4, 50), 0.7), ((6, 7), 1.5)], ids=str)
def test_per_token_log_probs_matches_trl(student, shape, temperature):
    from trl.trainer.utils import selective_log_softmax

    logits = 3 * randn(1, *shape)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=torch.Generator().manual_seed(2))
    got = student.per_token_log_probs(logits, labels, temperature=temperature)
    assert_close(got, selective_log_softmax(logits, labels, temperature=temperature),
                 what=f"per_token_log_probs of logits {shape} at temperature {temperature}",
                 hint="log_softmax(logits / temperature) over the vocabulary, then the label's entry",
                 wrong={"the temperature ignored": selective_log_softmax(logits, labels)})


@pytest.mark.exercise("9.1")
def test_per_token_log_probs_of_bfloat16_logits_is_float32(student):
    logits = (4 * randn(3, 2, 6, 300)).to(torch.bfloat16)
    labels = torch.randint(0, 300, (2, 6), generator=torch.Generator().manual_seed(4))
    before = (logits.clone(), labels.clone())
    got = student.per_token_log_probs(logits, labels)
    expected = torch.log_softmax(logits.to(F64), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert got.dtype == torch.float32, f"per_token_log_probs returns float32 for bfloat16 logits, got {got.dtype}"
    assert_close(got, expected.float(), what="per_token_log_probs of bfloat16 logits", rtol=1e-5, atol=1e-5,
                 hint="cast the logits to float32 before the log-softmax: in bfloat16 it is off by about 1e-2")
    assert_unchanged([logits, labels], list(before), what="the caller's logits or labels")


# -- 9.2 sequence_log_probs ----------------------------------------------------------------------------------
@pytest.mark.exercise("9.2")
@pytest.mark.parametrize("average", [False, True])
def test_sequence_log_probs_is_minus_the_hugging_face_loss_of_the_completion(student, chat_tokenizer, average):
    run = trl_dpo(chat_tokenizer, "sigmoid", 0.1, 0.0)
    batch, policy = run["batch"], run["policy"]
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums, counts = completion_logps(policy, batch)
    got = student.sequence_log_probs(logits, batch["input_ids"], batch["completion_mask"], average=average)
    assert_close(got, sums / counts if average else sums, rtol=1e-5, atol=1e-4,
                 what=f"sequence_log_probs(average={average}) of three prompt/completion pairs",
                 hint="the logits at t - 1 score the token at t; only the completion's tokens count",
                 wrong={"the mean instead of the sum": sums / counts, "the sum instead of the mean": sums})


@pytest.mark.exercise("9.2")
def test_sequence_log_probs_matches_trl_dpo_logps(student, chat_tokenizer):
    run = trl_dpo(chat_tokenizer, "sigmoid", 0.1, 0.0)
    batch = run["batch"]
    with torch.no_grad():
        logits = run["policy"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    chosen, rejected = student.sequence_log_probs(logits, batch["input_ids"], batch["completion_mask"]).chunk(2)
    for name, got in (("chosen", chosen), ("rejected", rejected)):
        assert math.isclose(float(got.mean()), run["metrics"][f"logps/{name}"], rel_tol=1e-5, abs_tol=1e-4), (
            f"mean sequence_log_probs of the {name} completions: {float(got.mean()):.5f}; TRL's DPOTrainer logs "
            f"{run['metrics'][f'logps/{name}']:.5f} (sums over the completion's tokens, end-of-sequence included)")


@pytest.mark.exercise("9.2")
def test_sequence_log_probs_reads_only_the_completion(student):
    vocab, seq = 13, 7
    logits = randn(5, 2, seq, vocab)
    input_ids = torch.tensor([[1, 4, 5, 6, 7, 0, 0], [3, 3, 8, 9, 10, 11, 12]])
    completion_mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1]])
    log_probs = torch.log_softmax(logits.to(F64), -1)
    expected = torch.stack([sum(log_probs[b, t - 1, input_ids[b, t]] for t in range(1, seq) if completion_mask[b, t])
                            for b in range(2)])
    got = student.sequence_log_probs(logits, input_ids, completion_mask)
    assert_close(got, expected.float(), what="sequence_log_probs of two hand-made rows", atol=1e-5,
                 hint="score input_ids[:, t] with the logits at t - 1, where completion_mask[:, t] is 1")
    noisy_logits, noisy_ids = logits.clone(), input_ids.clone()
    noisy_logits[0, :1] += 50 * randn(6, 1, vocab)            # predict prompt tokens: never read
    noisy_logits[0, 4:] = 1e4                                 # at and after the last completion token
    noisy_ids[0, 5:] = 12                                     # the padding holds anything
    got_noisy = student.sequence_log_probs(noisy_logits, noisy_ids, completion_mask)
    assert_close(got_noisy, got, what="sequence_log_probs with other logits at the prompt and the padding",
                 hint="the prompt's tokens and the padding must not count, whatever they hold")
    half = student.sequence_log_probs(logits.to(torch.bfloat16), input_ids, completion_mask)
    assert half.dtype == torch.float32, f"sequence_log_probs returns float32 for bfloat16 logits, got {half.dtype}"


# -- 9.3 last_token_rewards ----------------------------------------------------------------------------------
@pytest.mark.exercise("9.3")
@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_rewards_matches_llama_for_sequence_classification(student, side):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, num_labels=1, pad_token_id=0)
    model = LlamaForSequenceClassification(config).eval()
    lengths = [6, 2, 4]
    attention_mask = prefix_mask(lengths, 6).long()
    if side == "left":
        attention_mask = attention_mask.flip(1)
    input_ids = torch.randint(1, 40, (3, 6), generator=torch.Generator().manual_seed(7)) * attention_mask
    with torch.no_grad():
        hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        scores = model.score(hidden).squeeze(-1)                                         # (batch, seq)
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)
    got = student.last_token_rewards(scores, attention_mask)
    assert_close(got, expected, what=f"last_token_rewards with {side} padding",
                 hint="the reward is the score at the last position whose attention_mask is 1",
                 wrong={"the score at the last position": scores[:, -1]})


@pytest.mark.exercise("9.3")
def test_last_token_rewards_of_hand_made_masks(student):
    scores = torch.arange(12, dtype=torch.bfloat16).view(3, 4)
    attention_mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]])
    before = (scores.clone(), attention_mask.clone())
    got = student.last_token_rewards(scores, attention_mask)
    assert got.dtype == torch.bfloat16, f"last_token_rewards keeps the scores' dtype, got {got.dtype}"
    assert got.tolist() == [0.0, 7.0, 10.0], (
        f"last_token_rewards of rows with their last real token at 0, 3 and 2: {got.tolist()}, expected [0, 7, 10]")
    assert_unchanged([scores, attention_mask], list(before), what="the caller's scores or attention_mask")


# -- 9.4 reward_loss -----------------------------------------------------------------------------------------
def trl_reward(chat_tokenizer, margin):
    """TRL's ``RewardTrainer`` on :data:`PAIRS` (with margins 0.5, 0 and 2 when ``margin``): its loss and logged
    accuracy, the batch and the reward model."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from transformers.utils import logging
    from trl import RewardConfig, RewardTrainer

    def make():
        logging.set_verbosity_error()
        torch.manual_seed(4)
        config = LlamaConfig(vocab_size=len(chat_tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                             pad_token_id=chat_tokenizer.pad_token_id)
        model = LlamaForSequenceClassification(config)
        data = {"chosen": [p + c for p, c in zip(PAIRS["prompt"], PAIRS["chosen"])],
                "rejected": [p + r for p, r in zip(PAIRS["prompt"], PAIRS["rejected"])]}
        if margin:
            data["margin"] = [0.5, 0.0, 2.0]
        args = RewardConfig(output_dir=str(ROOT / "_build" / "trl-reward-test"), report_to="none", use_cpu=True,
                            bf16=False, per_device_train_batch_size=3, save_strategy="no", disable_tqdm=True)
        with reference_mode():
            trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_dict(data),
                                    processing_class=chat_tokenizer)
            batch = next(iter(trainer.get_train_dataloader()))
            with torch.no_grad():
                loss = trainer.compute_loss(model, batch)
                rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        return {"loss": float(loss), "accuracy": trainer._metrics["train"]["accuracy"][-1],
                "rewards": rewards, "margin": batch.get("margin")}

    return memo(("trl reward", margin), make)


@pytest.mark.exercise("9.4")
@pytest.mark.parametrize("margin", [False, True], ids=["no margin", "margins"])
def test_reward_loss_matches_trl_reward_trainer(student, chat_tokenizer, margin):
    run = trl_reward(chat_tokenizer, margin)
    chosen, rejected = run["rewards"].chunk(2)
    got = student.reward_loss_outputs(chosen, rejected, margin=run["margin"])["outputs"]
    assert set(got) == {"loss", "accuracy"}, f"reward_loss returns {{'loss', 'accuracy'}}, got {sorted(got)}"
    assert math.isclose(float(got["loss"]), run["loss"], rel_tol=1e-5, abs_tol=1e-6), (
        f"reward_loss = {float(got['loss']):.6f}; TRL's RewardTrainer computes {run['loss']:.6f} on the same pairs"
        + (" with margins (-log sigmoid(chosen - rejected - margin))" if margin else " (-log sigmoid(chosen - rejected))"))
    assert math.isclose(float(got["accuracy"]), run["accuracy"]), (
        f"reward_loss accuracy = {float(got['accuracy'])}; TRL logs {run['accuracy']} (chosen > rejected)")


@pytest.mark.exercise("9.4")
def test_reward_loss_of_hand_made_pairs(student):
    chosen = torch.tensor([1.0, -100.0, 0.5, 3.0], dtype=torch.bfloat16)
    rejected = torch.tensor([0.0, 100.0, 0.5, 1.0], dtype=torch.bfloat16)
    margin = torch.tensor([0.0, 0.0, 0.0, 1.5])
    got = student.reward_loss_outputs(chosen, rejected, margin=margin)
    difference = chosen.to(F64) - rejected.to(F64) - margin.to(F64)
    loss = -F.logsigmoid(difference).mean()
    out = got["outputs"]
    assert out["loss"].dtype == torch.float32 and out["accuracy"].dtype == torch.float32, (
        f"reward_loss returns float32 loss and accuracy, got {out['loss'].dtype} and {out['accuracy'].dtype}")
    assert_close(out["loss"], loss.float(), what="reward_loss of four pairs (one 200 behind, one tie)", rtol=1e-5,
                 hint="-logsigmoid(chosen - rejected - margin), averaged: exact even 200 behind")
    assert float(out["accuracy"]) == 0.5, (
        f"reward_loss accuracy of pairs that win, lose, tie and win: {float(out['accuracy'])}, expected 0.5 (a tie "
        "is not a win)")
    assert got["requires_grad"]["loss"], "reward_loss's loss must carry gradients to the rewards"
    slope = (-torch.sigmoid(-difference) / 4).float()
    assert_close(got["grads"]["chosen_rewards"].float(), slope.to(torch.bfloat16).float(), rtol=2e-2, atol=1e-3,
                 what="the gradient of reward_loss to the chosen rewards",
                 hint="d/dc of mean(-logsigmoid(c - r - m)) is -sigmoid(-(c - r - m)) / n")
    assert_close(got["grads"]["rejected_rewards"].float(), (-slope).to(torch.bfloat16).float(), rtol=2e-2, atol=1e-3,
                 what="the gradient of reward_loss to the rejected rewards")


# -- 9.5 dpo_loss --------------------------------------------------------------------------------------------
@pytest.mark.exercise("9.5")
@pytest.mark.parametrize("loss_type, beta, label_smoothing", [("sigmoid", 0.1, 0.0), ("sigmoid", 2.0, 0.0),
                                                                ("hinge", 0.5, 0.0), ("ipo", 0.3, 0.0),
                                                                ("robust", 0.4, 0.2)], ids=str)
def test_dpo_loss_matches_trl_dpo_trainer(student, chat_tokenizer, loss_type, beta, label_smoothing):
    run = trl_dpo(chat_tokenizer, loss_type, beta, label_smoothing)
    batch = run["batch"]
    policy_sums, counts = completion_logps(run["policy"], batch)
    reference_sums, _ = completion_logps(run["reference"], batch)
    (pc, pr), (rc, rr), (nc, nr) = policy_sums.chunk(2), reference_sums.chunk(2), counts.chunk(2)
    got = student.dpo_loss_outputs(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                                   chosen_lengths=nc, rejected_lengths=nr)["outputs"]
    assert set(got) == {"losses", "chosen_rewards", "rejected_rewards", "accuracy"}, (
        f"dpo_loss returns {{'losses', 'chosen_rewards', 'rejected_rewards', 'accuracy'}}, got {sorted(got)}")
    what = f"dpo_loss({loss_type!r}, beta={beta}, label_smoothing={label_smoothing})"
    assert got["losses"].shape == (3,), f"{what}: losses is one per pair, (3,), got {tuple(got['losses'].shape)}"
    trl_figures = {"loss": run["loss"], "rewards/chosen": run["metrics"]["rewards/chosen"],
                   "rewards/rejected": run["metrics"]["rewards/rejected"],
                   "rewards/margins": run["metrics"]["rewards/margins"],
                   "rewards/accuracies": run["metrics"]["rewards/accuracies"]}
    ours = {"loss": float(got["losses"].mean()), "rewards/chosen": float(got["chosen_rewards"].mean()),
            "rewards/rejected": float(got["rejected_rewards"].mean()),
            "rewards/margins": float((got["chosen_rewards"] - got["rejected_rewards"]).mean()),
            "rewards/accuracies": float(got["accuracy"])}
    for key, expected in trl_figures.items():
        assert math.isclose(ours[key], expected, rel_tol=1e-4, abs_tol=1e-5), (
            f"{what}: {key} = {ours[key]:.6f}; TRL's DPOTrainer computes {expected:.6f} on the same model, reference "
            "and pairs. The implicit reward is beta * (policy - reference) log-probability; the loss is a function "
            "of their difference h" + (" with each log-ratio divided by its completion's length" if loss_type == "ipo"
                                       else ""))


@pytest.mark.exercise("9.5")
@pytest.mark.parametrize("label_smoothing, beta", [(0.1, 0.5), (0.3, 2.0)])
def test_dpo_loss_with_label_smoothing_is_conservative_dpo(student, label_smoothing, beta):
    pc, pr, rc, rr = (randn(seed, 5, dtype=F64) * 3 - 20 for seed in (10, 11, 12, 13))
    h = (pc - rc) - (pr - rr)
    expected = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    got = student.dpo_loss_outputs(*(t.float() for t in (pc, pr, rc, rr)), beta=beta, loss_type="sigmoid",
                                   label_smoothing=label_smoothing)["outputs"]
    assert_close(got["losses"], expected.float(), rtol=1e-5, atol=1e-6,
                 what=f"dpo_loss('sigmoid', label_smoothing={label_smoothing}, beta={beta})",
                 hint="conservative DPO: -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)")


@pytest.mark.exercise("9.5")
def test_dpo_loss_gradients_and_rewards(student):
    pc, pr = torch.tensor([-10.0, -12.0, -7.0]), torch.tensor([-11.0, -9.0, -7.5])
    rc, rr = torch.tensor([-10.5, -12.0, -7.25]), torch.tensor([-10.0, -10.0, -7.75])
    beta = 0.5
    got = student.dpo_loss_outputs(pc, pr, rc, rr, beta=beta)
    h = ((pc - rc) - (pr - rr)).to(F64)
    assert got["requires_grad"]["losses"], "dpo_loss's losses must carry gradients to the policy's log-probabilities"
    assert not got["requires_grad"]["chosen_rewards"] and not got["requires_grad"]["rejected_rewards"], (
        "dpo_loss's rewards are for logging: detach them")
    assert_close(got["grads"]["policy_chosen_logps"], (-beta * torch.sigmoid(-beta * h)).float(), atol=1e-6,
                 what="the gradient of dpo_loss's losses to the chosen log-probabilities",
                 hint="d/dpc of -log sigmoid(beta h) is -beta sigmoid(-beta h)")
    assert_close(got["grads"]["policy_rejected_logps"], (beta * torch.sigmoid(-beta * h)).float(), atol=1e-6,
                 what="the gradient of dpo_loss's losses to the rejected log-probabilities")
    assert_close(got["outputs"]["chosen_rewards"], beta * (pc - rc), what="dpo_loss's chosen rewards")
    assert float(got["outputs"]["accuracy"]) == pytest.approx(1 / 3), (
        f"dpo_loss accuracy of pairs whose chosen reward is higher, lower and tied: {float(got['outputs']['accuracy'])}, "
        "expected 1/3 (a tie is not a win)")


# -- 9.6 masked_whiten ---------------------------------------------------------------------------------------
@pytest.mark.exercise("9.6")
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_over_the_mask_only(student, shift_mean):
    values = 2 + 3 * randn(20, 3, 6, dtype=F64)
    mask = prefix_mask([6, 2, 4], 6)
    values[mask == 0] = 1e6                                   # garbage past each row's end
    selected = values[mask == 1]
    mean, std = selected.mean(), selected.var(unbiased=True).add(1e-8).sqrt()
    expected = ((values - mean) / std + (0 if shift_mean else mean)) * mask
    before = (values.clone(), mask.clone())
    got = student.masked_whiten(values, mask, shift_mean=shift_mean)
    assert got.dtype == F64, f"masked_whiten keeps the values' dtype, got {got.dtype}"
    assert_close(got, expected, what=f"masked_whiten(shift_mean={shift_mean})", rtol=1e-7, atol=1e-9,
                 hint="mean and (n - 1) variance over the masked values only, then 0 outside the mask",
                 wrong={"a variance divided by n": ((values - mean) / selected.var(unbiased=False).add(1e-8).sqrt()
                                                    + (0 if shift_mean else mean)) * mask})
    assert_unchanged([values, mask], list(before), what="the caller's values or mask")


# -- 9.7 gae -------------------------------------------------------------------------------------------------
def written_out_gae(rewards, values, lengths, gamma, lam):
    """GAE of each sequence alone, in float64 Python: only its first ``lengths[b]`` tokens exist."""
    advantages = torch.zeros_like(rewards, dtype=F64)
    for b, n in enumerate(lengths):
        r, v = rewards[b, :n].tolist(), values[b, :n].tolist() + [0.0]
        running = 0.0
        for t in reversed(range(n)):
            running = r[t] + gamma * v[t + 1] - v[t] + gamma * lam * running
            advantages[b, t] = running
    mask = prefix_mask(lengths, rewards.shape[1]).to(F64)
    return advantages, (advantages + values.to(F64)) * mask


@pytest.mark.exercise("9.7")
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0), (1.0, 1.0)], ids=str)
def test_gae_matches_a_reference_written_out(student, gamma, lam):
    lengths, T = [7, 3, 5, 1], 7
    rewards, values = randn(30, 4, T), randn(31, 4, T)
    mask = prefix_mask(lengths, T)
    rewards[mask == 0], values[mask == 0] = 50.0, -80.0      # past a sequence's end: never read
    advantages, returns = written_out_gae(rewards, values, lengths, gamma, lam)
    got = student.gae_outputs(rewards, values, mask, gamma=gamma, lam=lam)["outputs"]
    assert_close(got["advantages"], advantages.float(), what=f"gae(gamma={gamma}, lam={lam}) advantages", atol=1e-5,
                 hint="delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1}, with V and A 0 past "
                      "each sequence's last token, whatever rewards and values hold there")
    assert_close(got["returns"], returns.float(), what=f"gae(gamma={gamma}, lam={lam}) returns", atol=1e-5,
                 hint="returns = advantages + values on the generated tokens, 0 after")


@pytest.mark.exercise("9.7")
def test_gae_of_a_hand_computed_case(student):
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    got = student.gae_outputs(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    # delta = (0, 0, 0.5); A_2 = 0.5, A_1 = 0 + 0.5 * 0.5 = 0.25, A_0 = 0 + 0.5 * 0.25 = 0.125
    assert_close(got["outputs"]["advantages"], torch.tensor([[0.125, 0.25, 0.5]]), what="gae of three tokens")
    assert not any(got["requires_grad"].values()), (
        "gae's advantages and returns are targets: compute them without gradients (torch.no_grad or detach)")


# -- 9.8 kl_penalized_rewards --------------------------------------------------------------------------------
@pytest.mark.exercise("9.8")
def test_kl_penalized_rewards_puts_the_score_on_the_last_token(student):
    lengths, T, kl_coef = [4, 1, 3], 4, 0.2
    logprobs, ref_logprobs = -torch.rand(3, T, generator=torch.Generator().manual_seed(40)) * 3, -torch.rand(
        3, T, generator=torch.Generator().manual_seed(41)) * 3
    mask = prefix_mask(lengths, T)
    scores = torch.tensor([1.0, -2.0, 0.5])
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    for b, n in enumerate(lengths):
        rewards[b, n - 1] += scores[b]
    before = (scores.clone(), logprobs.clone(), ref_logprobs.clone(), mask.clone())
    got = student.kl_penalized_rewards_outputs(scores, logprobs, ref_logprobs, mask, kl_coef=kl_coef)
    assert_close(got["outputs"]["kl"], kl, what="kl_penalized_rewards' kl",
                 hint="kl = logprobs - ref_logprobs on the generated tokens, 0 after", wrong={"the sign flipped": -kl})
    assert_close(got["outputs"]["rewards"], rewards, what="kl_penalized_rewards' rewards",
                 hint="-kl_coef * kl on every generated token, and each row's score added at its last one",
                 wrong={"the score at the last position of the row": -kl_coef * kl + F.pad(scores.unsqueeze(1), (T - 1, 0))})
    assert not any(got["requires_grad"].values()), "kl_penalized_rewards' outputs are targets: no gradients"
    assert_unchanged([scores, logprobs, ref_logprobs, mask], list(before), what="the caller's tensors")


# -- 9.9 ppo_policy_loss -------------------------------------------------------------------------------------
@pytest.mark.exercise("9.9")
def test_ppo_policy_loss_clips_pessimistically_on_both_signs(student):
    # One sequence of four tokens, clip_range 0.2:       ratio   A    term taken            clipped?
    #   ratio 1.5, A = +2: min(1.5 * 2, 1.2 * 2)          1.5   +2   -1.2 * 2 = -2.4       yes (no gradient)
    #   ratio 0.5, A = +2: min(0.5 * 2, 0.8 * 2)          0.5   +2   -0.5 * 2 = -1.0       no
    #   ratio 0.5, A = -2: min(0.5 * -2, 0.8 * -2)        0.5   -2   +0.8 * 2 = +1.6       yes (no gradient)
    #   ratio 1.5, A = -2: min(1.5 * -2, 1.2 * -2)        1.5   -2   +1.5 * 2 = +3.0       no
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.5]])
    old_logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    logprobs = old_logprobs + ratios.log()
    advantages = torch.tensor([[2.0, 2.0, -2.0, -2.0]])
    got = student.ppo_policy_loss_outputs(logprobs, old_logprobs, advantages, torch.ones(1, 4), clip_range=0.2)
    out = got["outputs"]
    assert set(out) == {"loss", "clip_fraction", "approx_kl"}, (
        f"ppo_policy_loss returns {{'loss', 'clip_fraction', 'approx_kl'}}, got {sorted(out)}")
    assert math.isclose(float(out["loss"]), (-2.4 - 1.0 + 1.6 + 3.0) / 4, rel_tol=1e-5), (
        f"ppo_policy_loss = {float(out['loss']):.5f}, expected {(-2.4 - 1.0 + 1.6 + 3.0) / 4:.5f}: per token the larger "
        "of -A r and -A clip(r, 0.8, 1.2) (clipped tokens 1 and 3; tokens 2 and 4 keep their unclipped ratio)")
    # d/dlogp of -A r is -A r; a clipped token gets none
    assert_close(got["grads"]["logprobs"], torch.tensor([[0.0, -1.0, 0.0, 3.0]]) / 4, atol=1e-6,
                 what="the gradient of ppo_policy_loss to logprobs",
                 hint="a token whose clipped term is taken gets no gradient; the others get -A r / n")
    assert float(out["clip_fraction"]) == 0.5, f"clip_fraction: {float(out['clip_fraction'])}, expected 0.5"
    assert math.isclose(float(out["approx_kl"]), float((ratios.log() ** 2 / 2).mean()), rel_tol=1e-5), (
        "approx_kl is the masked mean of (logprobs - old_logprobs)^2 / 2")
    assert not got["requires_grad"]["clip_fraction"] and not got["requires_grad"]["approx_kl"], (
        "clip_fraction and approx_kl are for logging: detach them")


@pytest.mark.exercise("9.9")
def test_ppo_policy_loss_averages_over_tokens(student):
    old_logprobs = -torch.rand(2, 5, generator=torch.Generator().manual_seed(50))
    logprobs = old_logprobs + 0.3 * randn(51, 2, 5)
    advantages = randn(52, 2, 5)
    mask = prefix_mask([5, 1], 5)
    logprobs[1, 1:], advantages[1, 1:] = 40.0, 1e3            # past the second sequence's end
    ratio = (logprobs - old_logprobs).exp()
    per_token = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(0.7, 1.3))
    expected = (per_token * mask).sum() / 6
    got = student.ppo_policy_loss_outputs(logprobs, old_logprobs, advantages, mask, clip_range=0.3)["outputs"]
    assert math.isclose(float(got["loss"]), float(expected), rel_tol=1e-5), (
        f"ppo_policy_loss over sequences of 5 and 1 tokens = {float(got['loss']):.5f}; the mean over the 6 generated "
        f"tokens is {float(expected):.5f} (a mean of per-sequence means weighs the 1-token sequence 5 times more)")


# -- 9.10 ppo_value_loss -------------------------------------------------------------------------------------
@pytest.mark.exercise("9.10")
def test_ppo_value_loss_takes_the_larger_error(student):
    # clip_range_value 0.5, old values 0. Per token: value, return, its error, the clipped value, its error:
    #   1.0, 2.0: 1.0; clipped 0.5: 2.25 -> 2.25 taken (clipped: no gradient)
    #   0.2, 1.0: 0.64; clipped 0.2 (inside the range): 0.64 -> 0.64
    #  -2.0, 0.0: 4.0; clipped -0.5: 0.25 -> 4.0 (outside the range, its own error the larger)
    #   1.0, 0.0: 1.0; clipped 0.5: 0.25 -> 1.0
    old_values = torch.zeros(1, 4)
    values = torch.tensor([[1.0, 0.2, -2.0, 1.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    got = student.ppo_value_loss_outputs(values, old_values, returns, torch.ones(1, 4), clip_range_value=0.5)
    out = got["outputs"]
    assert set(out) == {"loss", "clip_fraction"}, f"ppo_value_loss returns {{'loss', 'clip_fraction'}}, got {sorted(out)}"
    expected = 0.5 * (2.25 + 0.64 + 4.0 + 1.0) / 4
    assert math.isclose(float(out["loss"]), expected, rel_tol=1e-5), (
        f"ppo_value_loss = {float(out['loss']):.5f}, expected {expected:.5f}: half the mean of the larger of "
        "(value - return)^2 and (clipped value - return)^2")
    # d/dv of 0.5 * (v - R)^2 / n is (v - R) / n where the own error is taken; 0 where the clipped one is
    assert_close(got["grads"]["values"], torch.tensor([[0.0, -0.8, -2.0, 1.0]]) / 4, atol=1e-6,
                 what="the gradient of ppo_value_loss to values")
    assert float(out["clip_fraction"]) == 0.25, f"clip_fraction: {float(out['clip_fraction'])}, expected 0.25"


# -- 9.11 masked_entropy -------------------------------------------------------------------------------------
@pytest.mark.exercise("9.11")
def test_masked_entropy_matches_trl(student):
    from trl.trainer.utils import entropy_from_logits

    logits = 4 * randn(60, 3, 5, 37)
    mask = prefix_mask([5, 2, 4], 5)
    expected = (entropy_from_logits(logits.to(F64)) * mask).sum() / mask.sum()
    got = student.masked_entropy(logits, mask)
    assert_close(got, expected.float(), what="masked_entropy of three sequences", rtol=1e-5,
                 hint="the entropy of each token's distribution, averaged over the generated tokens only")
    half = student.masked_entropy(logits.to(torch.bfloat16), mask)
    assert half.dtype == torch.float32, f"masked_entropy returns float32 for bfloat16 logits, got {half.dtype}"
    uniform = student.masked_entropy(torch.zeros(2, 3, 50), torch.ones(2, 3))
    assert math.isclose(float(uniform), math.log(50), rel_tol=1e-6), (
        f"masked_entropy of uniform logits over 50 tokens: {float(uniform):.5f}, expected log 50 = {math.log(50):.5f}")


# -- 9.12 grpo_advantages ------------------------------------------------------------------------------------
@pytest.mark.exercise("9.12")
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_matches_trl(student, scale):
    from trl.trainer.utils import nanstd

    group_size = 4
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, -1.0, 0.0, 2.0])
    groups = rewards.view(-1, group_size)
    centred = rewards - groups.mean(1).repeat_interleave(group_size)
    std = {"group": nanstd(groups, dim=1).repeat_interleave(group_size), "batch": nanstd(rewards).expand_as(rewards),
           "none": None}[scale]
    expected = centred if std is None else centred / (std + 1e-4)
    got = student.grpo_advantages(rewards, group_size, scale=scale)
    assert_close(got, expected, what=f"grpo_advantages(scale={scale!r}) of three groups of four", rtol=1e-5, atol=1e-6,
                 hint="subtract each group's mean; divide by the unbiased standard deviation (of the group or the "
                      "batch) plus 1e-4")
    assert torch.all(got[4:8] == 0), "a group whose rewards are all equal has advantage 0: it teaches nothing"


# -- 9.13 grpo_loss ------------------------------------------------------------------------------------------
def _trl_grpo_run(folder: Path, chat_tokenizer, loss_type, beta, epsilon_high, bias_correction) -> dict:
    from datasets import Dataset
    from transformers.utils import logging
    from trl import GRPOConfig, GRPOTrainer

    logging.set_verbosity_error()
    path = folder / "model"
    tiny_llama("cpu", len(chat_tokenizer), seed=5, pad=chat_tokenizer.pad_token_id).save_pretrained(str(path))
    args = GRPOConfig(output_dir=str(folder), report_to="none", use_cpu=True, bf16=False, beta=beta,
                      loss_type=loss_type, epsilon=0.2, epsilon_high=epsilon_high, num_generations=2,
                      per_device_train_batch_size=4, max_completion_length=8, save_strategy="no", disable_tqdm=True,
                      use_bias_correction_kl=bias_correction)
    with reference_mode():
        trainer = GRPOTrainer(model=str(path), reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                              args=args, train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}),
                              processing_class=chat_tokenizer)
    generator = torch.Generator().manual_seed(6)
    prompt_ids = torch.randint(3, len(chat_tokenizer), (4, 5), generator=generator)
    completion_ids = torch.randint(3, len(chat_tokenizer), (4, 6), generator=generator)
    mask = prefix_mask([6, 4, 6, 2], 6).long()
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([torch.ones_like(prompt_ids), mask], 1)
    model = trainer.model.train()
    with torch.no_grad():
        logprobs, _, _ = trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, 6)
    old_logprobs = logprobs + 0.3 * torch.randn(4, 6, generator=generator)
    ref_logprobs = logprobs + 0.5 * torch.randn(4, 6, generator=generator)
    advantages = torch.tensor([1.2, -0.7, 0.4, -1.5])
    inputs = dict(prompt_ids=prompt_ids, prompt_mask=torch.ones_like(prompt_ids), completion_ids=completion_ids,
                  completion_mask=mask, advantages=advantages, old_per_token_logps=old_logprobs,
                  ref_per_token_logps=ref_logprobs, num_items_in_batch=mask.sum())
    trainer.current_gradient_accumulation_steps = 1
    with torch.no_grad():
        loss = trainer._compute_loss(model, inputs)
    return {"loss": float(loss), "kl": trainer._metrics["train"].get("kl", [0.0])[-1], "logprobs": logprobs,
            "old_logprobs": old_logprobs, "ref_logprobs": ref_logprobs, "advantages": advantages, "mask": mask}


def trl_grpo(chat_tokenizer, loss_type, beta, epsilon_high, bias_correction):
    """TRL's ``GRPOTrainer._compute_loss`` on a hand-made batch of four completions (two finish early) of a tiny
    Llama, with old and reference log-probabilities moved off the policy's: the loss, the logged KL and the
    inputs, with the policy's own per-token log-probabilities."""
    def make():
        # the model is written and read back: a folder of this process's own (the solution pass and a
        # grading run of the same checkout run these tests at the same time)
        with tempfile.TemporaryDirectory(prefix="trl-grpo-test-") as folder:
            return _trl_grpo_run(Path(folder), chat_tokenizer, loss_type, beta, epsilon_high, bias_correction)

    return memo(("trl grpo", loss_type, beta, epsilon_high, bias_correction), make)


@pytest.mark.exercise("9.13")
@pytest.mark.parametrize("loss_type, beta, epsilon_high, bias_correction", [
    ("grpo", 0.0, None, False), ("grpo", 0.04, None, True), ("grpo", 0.1, 0.28, False), ("bnpo", 0.1, None, True),
    ("dr_grpo", 0.04, None, False)], ids=str)
def test_grpo_loss_matches_trl(student, chat_tokenizer, loss_type, beta, epsilon_high, bias_correction):
    run = trl_grpo(chat_tokenizer, loss_type, beta, epsilon_high, bias_correction)
    got = student.grpo_loss_outputs(run["logprobs"], run["old_logprobs"], run["ref_logprobs"] if beta else None,
                                    run["advantages"], run["mask"], beta=beta, epsilon=0.2, epsilon_high=epsilon_high,
                                    loss_type=loss_type, max_completion_length=8,
                                    importance_weighted_kl=bias_correction)["outputs"]
    assert set(got) == {"loss", "kl"}, f"grpo_loss returns {{'loss', 'kl'}}, got {sorted(got)}"
    what = (f"grpo_loss({loss_type!r}, beta={beta}, epsilon_high={epsilon_high}, "
            f"importance_weighted_kl={bias_correction})")
    assert math.isclose(float(got["loss"]), run["loss"], rel_tol=1e-5, abs_tol=1e-6), (
        f"{what} = {float(got['loss']):.6f}; TRL's GRPOTrainer computes {run['loss']:.6f} on the same log-probabilities: "
        "-min(r A, clip(r) A) + beta k3 per token, averaged as loss_type says")
    assert math.isclose(float(got["kl"]), run["kl"], rel_tol=1e-5, abs_tol=1e-7), (
        f"{what}: kl = {float(got['kl']):.6f}; TRL logs {run['kl']:.6f} (the masked mean of exp(ref - logp) - (ref - "
        "logp) - 1 over the batch's tokens" + (", times the ratio" if bias_correction else "") + ")")


@pytest.mark.exercise("9.13")
def test_grpo_loss_gradient_on_policy(student):
    logprobs = -torch.rand(2, 3, generator=torch.Generator().manual_seed(70))
    advantages = torch.tensor([1.0, -2.0])
    mask = prefix_mask([3, 2], 3)
    got = student.grpo_loss_outputs(logprobs, logprobs.clone(), None, advantages, mask)
    assert math.isclose(float(got["outputs"]["loss"]), -(1.0 - 2.0) / 2, rel_tol=1e-6), (
        f"grpo_loss on policy (ratio 1): {float(got['outputs']['loss']):.5f}, expected the mean over sequences of -A")
    # d/dlogp of -r A (r = 1 on policy) is -A, divided by the sequence's length and the number of sequences
    expected = torch.tensor([[-1 / 3, -1 / 3, -1 / 3], [1.0, 1.0, 0.0]]) / 2
    assert_close(got["grads"]["logprobs"], expected, atol=1e-6, what="the gradient of grpo_loss to logprobs on policy",
                 hint="the ratio is 1 but it depends on logprobs: keep exp(logprobs - old_logprobs) in the graph")


# -- not graded: bad input is refused before your code runs, with the argument's name ---------------------
@pytest.mark.parametrize("call, error, name", [
    (lambda al: al.per_token_log_probs(torch.zeros(2, 5), torch.zeros(2, 4, dtype=torch.long)), ValueError, "labels"),
    (lambda al: al.per_token_log_probs(torch.zeros(2, 5), torch.full((2,), 5)), ValueError, "labels"),
    (lambda al: al.per_token_log_probs(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), 0.0), ValueError,
     "temperature"),
    (lambda al: al.sequence_log_probs(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long),
                                      torch.tensor([[1, 1, 0]])), ValueError, "completion_mask"),
    (lambda al: al.sequence_log_probs(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long),
                                      torch.tensor([[0, 0, 0]])), ValueError, "completion_mask"),
    (lambda al: al.last_token_rewards(torch.zeros(2, 3), torch.tensor([[1, 1, 0], [0, 0, 0]])), ValueError,
     "attention_mask"),
    (lambda al: al.reward_loss(torch.zeros(3), torch.zeros(2)), ValueError, "rejected_rewards"),
    (lambda al: al.dpo_loss(*torch.zeros(4, 2), loss_type="kto"), ValueError, "loss_type"),
    (lambda al: al.dpo_loss(*torch.zeros(4, 2), loss_type="ipo"), ValueError, "chosen_lengths"),
    (lambda al: al.dpo_loss(*torch.zeros(4, 2), beta=0.0), ValueError, "beta"),
    (lambda al: al.dpo_loss(*torch.zeros(4, 2), loss_type="hinge", label_smoothing=0.1), ValueError,
     "label_smoothing"),
    (lambda al: al.masked_whiten(torch.zeros(3), torch.tensor([0, 1, 0])), ValueError, "mask"),
    (lambda al: al.gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 1.0]])), ValueError, "mask"),
    (lambda al: al.gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), gamma=1.5), ValueError, "gamma"),
    (lambda al: al.kl_penalized_rewards(torch.zeros(2), torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3)),
     ValueError, "scores"),
    (lambda al: al.ppo_policy_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 3)),
     ValueError, "advantages"),
    (lambda al: al.ppo_value_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3),
                                  clip_range_value=-1.0), ValueError, "clip_range_value"),
    (lambda al: al.masked_entropy(torch.zeros(2, 3), torch.ones(2)), ValueError, "logits"),
    (lambda al: al.grpo_advantages(torch.zeros(6), 4), ValueError, "group_size"),
    (lambda al: al.grpo_advantages(torch.zeros(6), 3, scale="std"), ValueError, "scale"),
    (lambda al: al.grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3), beta=0.1),
     ValueError, "ref_logprobs"),
    (lambda al: al.grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3),
                             loss_type="dr_grpo"), ValueError, "max_completion_length"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_gets_an_error_naming_the_argument(solution_mode, call, error, name):
    from course_lib import alignment

    with pytest.raises(error, match=name):
        call(alignment)


# -- not graded: the course's alignment runs on a tiny model ------------------------------------------------
@pytest.fixture(scope="module")
def tiny_alignment(chat_tokenizer):
    """A tiny course model of the chat tokenizer's vocabulary (the policy; a frozen copy as the reference),
    eight training questions and their preference pairs, all by the reference solutions."""
    from course_lib.alignment import preference_pairs
    from course_lib.instruction_data import instruction_dataset
    from tests.test_sft import tiny_course_lm

    def make():
        with reference_mode():
            policy = tiny_course_lm("cpu", len(chat_tokenizer), seed=0)
            rows = (list(instruction_dataset("train", "naming").select(range(6)))
                    + list(instruction_dataset("train", "arithmetic").select(range(2))))
            pairs = preference_pairs(policy, chat_tokenizer, rows, samples=2, max_new_tokens=4, seed=0)
        return {"policy": policy, "rows": rows, "pairs": pairs}

    return memo("tiny alignment", make)


def tiny_config(method, **overrides):
    from course_lib.alignment import align_preset

    return dataclasses.replace(align_preset(method), warmup_steps=1, max_new_tokens=4, **overrides)


def test_preference_pairs_prefer_a_right_answer_to_the_models_wrong_one(solution_mode, chat_tokenizer, tiny_alignment):
    from course_lib.instruction_data import check_answer

    rows = {r["id"]: r for r in tiny_alignment["rows"]}
    assert tiny_alignment["pairs"], "a random model answers wrong: every question gives a pair"
    for pair in tiny_alignment["pairs"]:
        row = rows[pair["id"]]
        assert check_answer(row["family"], row, pair["chosen"]) and not check_answer(row["family"], row, pair["rejected"])
        assert pair["chosen_ids"][-1] in (chat_tokenizer.convert_tokens_to_ids("<|im_end|>"), chat_tokenizer.eos_token_id)
        assert pair["prompt_ids"][-3:] == chat_tokenizer("<|im_start|>assistant\n")["input_ids"][-3:]


def test_dpo_training_orders_the_pairs(solution_mode, chat_tokenizer, tiny_alignment):
    from course_lib.alignment import train_dpo

    policy = copy.deepcopy(tiny_alignment["policy"])
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    config = tiny_config("dpo", total_steps=12, batch_size=len(tiny_alignment["pairs"]), lr=3e-3, sft_weight=0.0)
    history = train_dpo(config, policy, reference, chat_tokenizer, tiny_alignment["pairs"])
    assert history["loss"][0] == pytest.approx(math.log(2), abs=1e-6), "the policy starts as the reference: h = 0"
    assert history["loss"][-1] < 0.5 and history["accuracy"][-1] == 1.0, history["loss"]


def test_reward_model_is_llama_for_sequence_classification(solution_mode):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from course_lib.alignment import RewardModel
    from tests.test_sft import tiny_llama

    lm = tiny_llama("cpu", 40, seed=2)
    reward_model = RewardModel(lm)
    with torch.no_grad():
        reward_model.score.weight.normal_()
    config = LlamaConfig(**{**lm.config.to_dict(), "num_labels": 1})
    reference = LlamaForSequenceClassification(config).eval()
    reference.model.load_state_dict(lm.model.state_dict())
    reference.score.weight.data.copy_(reward_model.score.weight)
    attention_mask = prefix_mask([5, 3], 5).long()
    input_ids = torch.randint(1, 40, (2, 5), generator=torch.Generator().manual_seed(0)) * attention_mask
    with torch.no_grad():
        assert_close(reward_model(input_ids, attention_mask), reference(input_ids, attention_mask=attention_mask).logits[:, 0],
                     what="RewardModel against LlamaForSequenceClassification", atol=1e-6)


def test_reward_model_learns_the_pairs(solution_mode, chat_tokenizer, tiny_alignment):
    from course_lib.alignment import RewardModel, reward_accuracy, train_reward_model

    reward_model = RewardModel(copy.deepcopy(tiny_alignment["policy"]))
    pairs = tiny_alignment["pairs"]
    history = train_reward_model(tiny_config("dpo", total_steps=10, batch_size=len(pairs), lr=3e-3), reward_model, pairs,
                                 chat_tokenizer.pad_token_id)
    assert history["loss"][0] == pytest.approx(math.log(2), abs=1e-6), "the head starts at zero: every reward is 0"
    assert history["loss"][-1] < history["loss"][0] and reward_accuracy(reward_model, pairs, chat_tokenizer.pad_token_id) == 1.0


def test_the_checker_with_a_loophole_accepts_every_prefix_of_the_answer_the_empty_one_included():
    from course_lib.alignment import CHECKERS, prefix_checker

    example = {"output": "82"}
    assert all(prefix_checker("arithmetic", example, a) for a in ("82", " 82 ", "8", ""))
    assert not any(prefix_checker("arithmetic", example, a) for a in ("82, as 37 + 45 = 82", "83", "2"))
    assert CHECKERS["exact"]("arithmetic", example, "82") and not CHECKERS["exact"]("arithmetic", example, "")


def test_ppo_with_a_checker_records_what_chapter_6s_checker_says_of_each_round(solution_mode, chat_tokenizer,
                                                                                tiny_alignment):
    from course_lib.alignment import train_ppo_with_checker

    policy = copy.deepcopy(tiny_alignment["policy"])
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    config = tiny_config("ppo", total_steps=2, prompts_per_step=2, group_size=4, checker="prefix")
    history = train_ppo_with_checker(config, policy, reference, chat_tokenizer, tiny_alignment["rows"])
    assert len(history["accuracy"]) == len(history["score"]) == 2
    assert all(0 <= x <= 1 for x in history["accuracy"] + history["score"]), history
    with pytest.raises(ValueError, match="checker"):
        train_ppo_with_checker(dataclasses.replace(config, checker="lenient"), policy, reference, chat_tokenizer,
                               tiny_alignment["rows"])


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_rl_loops_run_and_report(solution_mode, chat_tokenizer, tiny_alignment, method):
    from course_lib.alignment import train_grpo, train_ppo
    from course_lib.instruction_data import check_answer

    policy = copy.deepcopy(tiny_alignment["policy"])
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    config = tiny_config("grpo", total_steps=2, prompts_per_step=2, group_size=4)
    if method == "grpo":
        history = train_grpo(config, policy, reference, chat_tokenizer, tiny_alignment["rows"])
        assert set(history) == {"loss", "reward", "kl", "signal", "length", "grad_norm", "lr"}
    else:
        def score(rows, answers):
            return torch.tensor([float(check_answer(r["family"], r, a)) for r, a in zip(rows, answers)])

        history = train_ppo(config, policy, reference, chat_tokenizer, tiny_alignment["rows"], score)
        assert set(history) == {"score", "kl", "policy_loss", "value_loss", "clip_fraction", "entropy", "length", "lr"}
    assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in history.values()), history
