"""Chapter 9 graded tests (hidden: grading only, not in the student handout). More inputs for the
contracts the public tests check."""

import math

import pytest
import torch
import torch.nn.functional as F

from grading.expect import assert_close
from tests.test_alignment import (F64, completion_logps, prefix_mask, randn, trl_dpo, trl_grpo,  # noqa: F401
                                  written_out_gae)
from tests.test_sft import chat_tokenizer  # noqa: F401  (a fixture)


@pytest.mark.exercise("9.1")
def test_hidden_per_token_log_probs_of_float64_logits_at_temperature_two(student):
    logits, labels = randn(100, 3, 4, 9, dtype=F64), torch.randint(0, 9, (3, 4), generator=torch.Generator().manual_seed(1))
    expected = torch.log_softmax(logits / 2, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert_close(student.per_token_log_probs(logits, labels, temperature=2.0), expected.float(), atol=1e-6,
                 what="per_token_log_probs of float64 logits at temperature 2")


@pytest.mark.exercise("9.2")
def test_hidden_sequence_log_probs_mean_of_bfloat16_logits(student):
    logits = randn(101, 3, 9, 20).to(torch.bfloat16)
    input_ids = torch.randint(0, 20, (3, 9), generator=torch.Generator().manual_seed(2))
    completion_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 0, 0]])
    log_probs = torch.log_softmax(logits.to(F64), -1)
    expected = torch.stack([
        torch.stack([log_probs[b, t - 1, input_ids[b, t]] for t in range(1, 9) if completion_mask[b, t]]).mean()
        for b in range(3)])
    assert_close(student.sequence_log_probs(logits, input_ids, completion_mask, average=True), expected.float(),
                 atol=1e-5, what="sequence_log_probs(average=True) of bfloat16 logits")


@pytest.mark.exercise("9.3")
def test_hidden_last_token_rewards_of_a_mask_with_holes(student):
    scores = randn(102, 2, 5)
    attention_mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 1]])
    assert_close(student.last_token_rewards(scores, attention_mask), scores[[0, 1], [3, 4]],
                 what="last_token_rewards of rows whose last 1 is at 3 and 4")


@pytest.mark.exercise("9.4")
def test_hidden_reward_loss_of_random_pairs(student):
    chosen, rejected, margin = randn(103, 9, dtype=F64) * 4, randn(104, 9, dtype=F64) * 4, randn(105, 9, dtype=F64).abs()
    got = student.reward_loss_outputs(chosen.float(), rejected.float(), margin=margin.float())["outputs"]
    assert math.isclose(float(got["loss"]), float(-F.logsigmoid(chosen - rejected - margin).mean()), rel_tol=1e-5)
    assert float(got["accuracy"]) == float((chosen.float() > rejected.float()).float().mean())


@pytest.mark.exercise("9.5")
@pytest.mark.parametrize("loss_type, beta", [("sigmoid", 0.05), ("ipo", 1.0)])
def test_hidden_dpo_loss_matches_trl_at_other_betas(student, chat_tokenizer, loss_type, beta):
    run = trl_dpo(chat_tokenizer, loss_type, beta, 0.0)
    policy_sums, counts = completion_logps(run["policy"], run["batch"])
    reference_sums, _ = completion_logps(run["reference"], run["batch"])
    (pc, pr), (rc, rr), (nc, nr) = policy_sums.chunk(2), reference_sums.chunk(2), counts.chunk(2)
    got = student.dpo_loss_outputs(pc, pr, rc, rr, beta=beta, loss_type=loss_type, chosen_lengths=nc,
                                   rejected_lengths=nr)["outputs"]
    assert math.isclose(float(got["losses"].mean()), run["loss"], rel_tol=1e-4, abs_tol=1e-5)
    assert math.isclose(float(got["chosen_rewards"].mean()), run["metrics"]["rewards/chosen"], rel_tol=1e-4, abs_tol=1e-6)


@pytest.mark.exercise("9.6")
def test_hidden_masked_whiten_of_three_dimensions(student):
    values = randn(106, 2, 3, 4, dtype=F64)
    mask = (randn(107, 2, 3, 4) > 0).to(F64)
    selected = values[mask == 1]
    expected = (values - selected.mean()) / selected.var(unbiased=True).add(1e-8).sqrt() * mask
    assert_close(student.masked_whiten(values, mask), expected, rtol=1e-7, atol=1e-9,
                 what="masked_whiten of a 3-d tensor with a scattered mask")


@pytest.mark.exercise("9.7")
def test_hidden_gae_with_strong_discounting(student):
    lengths, T = [2, 6, 4], 6
    rewards, values = randn(108, 3, T), randn(109, 3, T)
    mask = prefix_mask(lengths, T)
    rewards[mask == 0] = -9.0
    advantages, returns = written_out_gae(rewards, values, lengths, 0.5, 0.3)
    got = student.gae_outputs(rewards, values, mask, gamma=0.5, lam=0.3)["outputs"]
    assert_close(got["advantages"], advantages.float(), atol=1e-5, what="gae(gamma=0.5, lam=0.3) advantages")
    assert_close(got["returns"], returns.float(), atol=1e-5, what="gae(gamma=0.5, lam=0.3) returns")


@pytest.mark.exercise("9.8")
def test_hidden_kl_penalized_rewards_without_a_penalty(student):
    logprobs, ref_logprobs = randn(110, 2, 3), randn(111, 2, 3)
    mask = prefix_mask([2, 3], 3)
    got = student.kl_penalized_rewards_outputs(torch.tensor([4.0, -1.0]), logprobs, ref_logprobs, mask,
                                               kl_coef=0.0)["outputs"]
    assert_close(got["rewards"], torch.tensor([[0.0, 4.0, 0.0], [0.0, 0.0, -1.0]]),
                 what="kl_penalized_rewards with kl_coef 0: the scores alone")


@pytest.mark.exercise("9.9")
def test_hidden_ppo_policy_loss_with_a_narrow_clip(student):
    old_logprobs, advantages = randn(112, 3, 4), randn(113, 3, 4)
    logprobs = old_logprobs + 0.2 * randn(114, 3, 4)
    mask = prefix_mask([4, 4, 2], 4)
    ratio = (logprobs - old_logprobs).exp()
    per_token = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(0.95, 1.05))
    got = student.ppo_policy_loss_outputs(logprobs, old_logprobs, advantages, mask, clip_range=0.05)["outputs"]
    assert math.isclose(float(got["loss"]), float((per_token * mask).sum() / mask.sum()), rel_tol=1e-5)
    clipped = -advantages * ratio.clamp(0.95, 1.05) > -advantages * ratio
    assert math.isclose(float(got["clip_fraction"]), float((clipped.float() * mask).sum() / mask.sum()), rel_tol=1e-6)


@pytest.mark.exercise("9.10")
def test_hidden_ppo_value_loss_of_random_predictions(student):
    values, old_values, returns = randn(115, 2, 5), randn(116, 2, 5), randn(117, 2, 5)
    mask = prefix_mask([5, 3], 5)
    clipped = old_values + (values - old_values).clamp(-0.3, 0.3)
    taken = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    got = student.ppo_value_loss_outputs(values, old_values, returns, mask, clip_range_value=0.3)["outputs"]
    assert math.isclose(float(got["loss"]), float(0.5 * (taken * mask).sum() / mask.sum()), rel_tol=1e-5)


@pytest.mark.exercise("9.11")
def test_hidden_masked_entropy_of_a_large_vocabulary(student):
    logits, mask = 2 * randn(118, 2, 3, 1000, dtype=F64), prefix_mask([1, 3], 3)
    p = torch.softmax(logits, -1)
    entropy = -(p * p.log()).sum(-1)
    assert_close(student.masked_entropy(logits, mask), ((entropy * mask).sum() / mask.sum()).float(), rtol=1e-5,
                 what="masked_entropy over 1,000 tokens")


@pytest.mark.exercise("9.12")
@pytest.mark.parametrize("group_size", [2, 8])
def test_hidden_grpo_advantages_of_other_group_sizes(student, group_size):
    rewards = randn(119, 16)
    groups = rewards.view(-1, group_size)
    expected = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).view(-1)
    assert_close(student.grpo_advantages(rewards, group_size), expected, rtol=1e-5, atol=1e-6,
                 what=f"grpo_advantages of groups of {group_size}")


@pytest.mark.exercise("9.13")
def test_hidden_grpo_loss_bnpo_with_a_wider_upper_clip(student, chat_tokenizer):
    run = trl_grpo(chat_tokenizer, "bnpo", 0.0, 0.3, False)
    got = student.grpo_loss_outputs(run["logprobs"], run["old_logprobs"], None, run["advantages"], run["mask"],
                                    epsilon_high=0.3, loss_type="bnpo")["outputs"]
    assert math.isclose(float(got["loss"]), run["loss"], rel_tol=1e-5, abs_tol=1e-6)
