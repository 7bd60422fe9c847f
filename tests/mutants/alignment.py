"""Plausible wrong answers to Chapter 9's exercises. Each must fail at least one public graded test
(``pytest --against mutants``). They are kept out of the student handout.

Each variant changes one thing in an otherwise correct implementation (the helpers below are the
correct parts they share), so that the test that catches it catches that mistake. Variants of the
exercises that tests call through an ``*_outputs`` entry point are run by the course's
:func:`~course_lib.alignment.run_with_gradients`, as those entry points run the real ones.
"""

import torch
import torch.nn.functional as F

WHITEN_EPS, GRPO_STD_EPS = 1e-8, 1e-4


def _through(wrt, loss, names):
    """A variant run as its entry point runs the real exercise: ``run_with_gradients(variant, wrt, loss, ...)``."""
    def wrap(wrong, entry_name):
        def entry_point(*args, **kwargs):
            from course_lib.alignment import run_with_gradients

            return run_with_gradients(wrong, wrt, loss, names, *args, **kwargs)

        entry_point.__name__ = wrong.__name__
        return entry_point
    return wrap


def _masked_mean(x, mask):
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum()


# -- 9.1 per_token_log_probs ---------------------------------------------------------------------------------------
def log_probs_ignoring_the_temperature(logits, labels, temperature=1.0):
    return torch.log_softmax(logits.float(), -1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def log_probs_in_the_logits_dtype(logits, labels, temperature=1.0):
    return torch.log_softmax(logits / temperature, -1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1).float()


def log_probs_multiplied_by_the_temperature(logits, labels, temperature=1.0):
    return torch.log_softmax(logits.float() * temperature, -1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


# -- 9.2 sequence_log_probs ----------------------------------------------------------------------------------------
def _sequence(logits, input_ids, completion_mask, average, *, shift=True, mask=None):
    log_probs = torch.log_softmax(logits.float(), -1)
    if shift:
        token = log_probs[:, :-1].gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        weights = (completion_mask[:, 1:] if mask is None else mask[:, 1:]).float()
    else:
        token = log_probs.gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)
        weights = completion_mask.float()
    total = (token * weights).sum(-1)
    return total / weights.sum(-1) if average else total


def sequence_log_probs_including_the_prompt(logits, input_ids, completion_mask, average=False):
    return _sequence(logits, input_ids, completion_mask, average, mask=torch.ones_like(completion_mask))


def sequence_log_probs_without_the_shift(logits, input_ids, completion_mask, average=False):
    return _sequence(logits, input_ids, completion_mask, average, shift=False)


def sequence_log_probs_always_summed(logits, input_ids, completion_mask, average=False):
    return _sequence(logits, input_ids, completion_mask, False)


def sequence_log_probs_with_the_mask_shifted_the_wrong_way(logits, input_ids, completion_mask, average=False):
    return _sequence(logits, input_ids, completion_mask, average,
                     mask=torch.cat([completion_mask[:, 1:], completion_mask[:, :1] * 0], 1))


# -- 9.3 last_token_rewards ----------------------------------------------------------------------------------------
def last_token_rewards_at_the_count_of_tokens(scores, attention_mask):
    last = attention_mask.long().sum(-1) - 1                  # right padding only
    return scores[torch.arange(scores.shape[0]), last]


def last_token_rewards_at_the_last_position(scores, attention_mask):
    return scores[:, -1]


def last_token_rewards_in_float32(scores, attention_mask):
    last = (torch.arange(scores.shape[1]) * attention_mask.long()).argmax(-1)
    return scores.float()[torch.arange(scores.shape[0]), last]


# -- 9.4 reward_loss -----------------------------------------------------------------------------------------------
def _reward(chosen, rejected, margin, *, margin_sign=1, naive=False, ties_win=False, sum_=False):
    difference = chosen.float() - rejected.float()
    if margin is not None:
        difference = difference - margin_sign * margin.float()
    losses = -torch.log(torch.sigmoid(difference)) if naive else -F.logsigmoid(difference)
    wins = chosen >= rejected if ties_win else chosen > rejected
    return {"loss": losses.sum() if sum_ else losses.mean(), "accuracy": wins.float().mean()}


def reward_loss_adding_the_margin(chosen_rewards, rejected_rewards, margin=None):
    return _reward(chosen_rewards, rejected_rewards, margin, margin_sign=-1)


def reward_loss_through_log_of_sigmoid(chosen_rewards, rejected_rewards, margin=None):
    return _reward(chosen_rewards, rejected_rewards, margin, naive=True)


def reward_loss_counting_ties_as_wins(chosen_rewards, rejected_rewards, margin=None):
    return _reward(chosen_rewards, rejected_rewards, margin, ties_win=True)


def reward_loss_summed(chosen_rewards, rejected_rewards, margin=None):
    return _reward(chosen_rewards, rejected_rewards, margin, sum_=True)


# -- 9.5 dpo_loss --------------------------------------------------------------------------------------------------
def _dpo(pc, pr, rc, rr, beta, loss_type, label_smoothing, nc, nr, *, reference=True, beta_inside=True,
         ipo_lengths=True, smoothing_sign=1, detach_rewards=True, ties_win=False, rewards_without_beta=False):
    if reference:
        chosen, rejected = pc.float() - rc.float(), pr.float() - rr.float()
    else:
        chosen, rejected = pc.float(), pr.float()
    h = chosen - rejected
    e = label_smoothing

    def logsig(x):
        return F.logsigmoid(beta * x) if beta_inside else beta * F.logsigmoid(x)

    if loss_type == "sigmoid":
        losses = -(1 - e) * logsig(h) - smoothing_sign * e * logsig(-h)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        if ipo_lengths:
            h = chosen / nc.float() - rejected / nr.float()
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = (-(1 - e) * logsig(h) + e * logsig(-h)) / (1 - 2 * e)
    scale = 1.0 if rewards_without_beta else beta
    chosen_rewards, rejected_rewards = scale * chosen, scale * rejected
    if detach_rewards:
        chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    wins = chosen_rewards >= rejected_rewards if ties_win else chosen_rewards > rejected_rewards
    return {"losses": losses, "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards,
            "accuracy": wins.float().mean().detach()}


def _dpo_variant(name, **flags):
    def variant(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1,
                loss_type="sigmoid", label_smoothing=0.0, chosen_lengths=None, rejected_lengths=None):
        return _dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, loss_type,
                    label_smoothing, chosen_lengths, rejected_lengths, **flags)
    variant.__name__ = name
    return variant


dpo_without_the_reference = _dpo_variant("dpo_without_the_reference", reference=False)
dpo_with_beta_outside_the_sigmoid = _dpo_variant("dpo_with_beta_outside_the_sigmoid", beta_inside=False)
dpo_ipo_without_length_normalisation = _dpo_variant("dpo_ipo_without_length_normalisation", ipo_lengths=False)
dpo_smoothing_with_the_wrong_sign = _dpo_variant("dpo_smoothing_with_the_wrong_sign", smoothing_sign=-1)
dpo_rewards_not_detached = _dpo_variant("dpo_rewards_not_detached", detach_rewards=False)
dpo_rewards_without_beta = _dpo_variant("dpo_rewards_without_beta", rewards_without_beta=True)
dpo_counting_ties_as_wins = _dpo_variant("dpo_counting_ties_as_wins", ties_win=True)


# -- 9.6 masked_whiten ---------------------------------------------------------------------------------------------
def _whiten(values, mask, shift_mean, *, unbiased=True, over_everything=False, zero_outside=True):
    weights = torch.ones_like(values) if over_everything else mask.to(values.dtype)
    count = weights.sum()
    mean = (values * weights).sum() / count
    variance = (((values - mean) * weights) ** 2).sum() / (count - 1 if unbiased else count)
    whitened = (values - mean) * torch.rsqrt(variance + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype) if zero_outside else whitened


def whiten_with_a_biased_variance(values, mask, shift_mean=True):
    return _whiten(values, mask, shift_mean, unbiased=False)


def whiten_over_every_entry(values, mask, shift_mean=True):
    return _whiten(values, mask, shift_mean, over_everything=True)


def whiten_leaving_the_outside_alone(values, mask, shift_mean=True):
    return _whiten(values, mask, shift_mean, zero_outside=False)


# -- 9.7 gae ---------------------------------------------------------------------------------------------------
def _gae(rewards, values, mask, gamma, lam, *, stop_at_end=True, lam_on_values=False, bootstrap_last=False):
    rewards, values, mask = rewards.float(), values.float().detach(), mask.float()
    advantages = torch.zeros_like(rewards)
    carried = torch.zeros_like(rewards[:, 0])
    T = rewards.shape[1]
    for t in reversed(range(T)):
        if t + 1 < T:
            alive = mask[:, t + 1] if stop_at_end else torch.ones_like(carried)
            next_value = values[:, t + 1] * alive
        else:
            alive = torch.zeros_like(carried)
            next_value = values[:, t] if bootstrap_last else torch.zeros_like(carried)
        discount = gamma * lam if lam_on_values else gamma
        delta = rewards[:, t] + discount * next_value - values[:, t]
        carried = (delta + gamma * lam * alive * carried) * mask[:, t]
        advantages[:, t] = carried
    return advantages, (advantages + values) * mask


def gae_running_past_the_end(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae(rewards, values, mask, gamma, lam, stop_at_end=False)


def gae_discounting_values_by_lambda(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae(rewards, values, mask, gamma, lam, lam_on_values=True)


def gae_bootstrapping_the_last_token(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae(rewards, values, mask, gamma, lam, bootstrap_last=True)


def gae_with_gradients(rewards, values, mask, gamma=1.0, lam=0.95):
    advantages, _ = _gae(rewards, values, mask, gamma, lam)
    return advantages, (advantages + values.float()) * mask.float()


# -- 9.8 kl_penalized_rewards --------------------------------------------------------------------------------------
def _kl_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, *, sign=1, last_position=False, detach=True):
    mask = mask.float()
    logprobs = logprobs.detach() if detach else logprobs
    kl = sign * (logprobs.float() - ref_logprobs.float()) * mask
    rewards = -kl_coef * kl
    last = torch.full_like(scores, rewards.shape[1] - 1).long() if last_position else mask.sum(-1).long() - 1
    rewards = rewards + F.one_hot(last, rewards.shape[1]).float() * scores.float().unsqueeze(1)
    return {"rewards": rewards, "kl": kl}


def kl_rewards_with_the_sign_flipped(scores, logprobs, ref_logprobs, mask, kl_coef=0.05):
    return _kl_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, sign=-1)


def kl_rewards_scoring_the_last_position(scores, logprobs, ref_logprobs, mask, kl_coef=0.05):
    return _kl_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, last_position=True)


def kl_rewards_with_gradients(scores, logprobs, ref_logprobs, mask, kl_coef=0.05):
    return _kl_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, detach=False)


# -- 9.9 ppo_policy_loss -------------------------------------------------------------------------------------------
def _policy(logprobs, old_logprobs, advantages, mask, clip_range, *, upper_only=False, optimistic=False,
            mean_of_means=False, clip_logratio=False):
    log_ratio = logprobs.float() - old_logprobs.float()
    ratio = torch.exp(log_ratio)
    low = 0.0 if upper_only else 1 - clip_range
    clipped_ratio = torch.exp(log_ratio.clamp(-clip_range, clip_range)) if clip_logratio else ratio.clamp(low, 1 + clip_range)
    unclipped, clipped = -advantages * ratio, -advantages * clipped_ratio
    per_token = torch.minimum(unclipped, clipped) if optimistic else torch.maximum(unclipped, clipped)
    if mean_of_means:
        m = mask.float()
        loss = ((per_token * m).sum(-1) / m.sum(-1)).mean()
    else:
        loss = _masked_mean(per_token, mask)
    return {"loss": loss, "clip_fraction": _masked_mean((clipped > unclipped).float(), mask).detach(),
            "approx_kl": _masked_mean(0.5 * log_ratio.detach() ** 2, mask)}


def ppo_ratio_clipped_above_only(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    return _policy(logprobs, old_logprobs, advantages, mask, clip_range, upper_only=True)


def ppo_optimistic_minimum(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    return _policy(logprobs, old_logprobs, advantages, mask, clip_range, optimistic=True)


def ppo_mean_of_sequence_means(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    return _policy(logprobs, old_logprobs, advantages, mask, clip_range, mean_of_means=True)


def ppo_clipping_the_log_ratio(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    return _policy(logprobs, old_logprobs, advantages, mask, clip_range, clip_logratio=True)


# -- 9.10 ppo_value_loss -------------------------------------------------------------------------------------------
def _value(values, old_values, returns, mask, c, *, clip_around_returns=False, half=True, smaller=False):
    values, old_values, returns = values.float(), old_values.float(), returns.float()
    centre = returns if clip_around_returns else old_values
    clipped_values = centre + torch.clamp(values - centre, -c, c)
    error, clipped_error = (values - returns) ** 2, (clipped_values - returns) ** 2
    taken = torch.minimum(error, clipped_error) if smaller else torch.maximum(error, clipped_error)
    return {"loss": (0.5 if half else 1.0) * _masked_mean(taken, mask),
            "clip_fraction": _masked_mean((clipped_error > error).float(), mask).detach()}


def value_loss_clipped_around_the_returns(values, old_values, returns, mask, clip_range_value=0.2):
    return _value(values, old_values, returns, mask, clip_range_value, clip_around_returns=True)


def value_loss_without_the_half(values, old_values, returns, mask, clip_range_value=0.2):
    return _value(values, old_values, returns, mask, clip_range_value, half=False)


def value_loss_taking_the_smaller_error(values, old_values, returns, mask, clip_range_value=0.2):
    return _value(values, old_values, returns, mask, clip_range_value, smaller=True)


# -- 9.11 masked_entropy -------------------------------------------------------------------------------------------
def entropy_over_every_token(logits, mask):
    logits = logits.float()
    return (torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)).mean()


def entropy_of_the_logits_as_probabilities(logits, mask):
    p = logits.float().clamp(min=1e-12)
    return _masked_mean(-(p * p.log()).sum(-1), mask)


def entropy_in_bits(logits, mask):
    logits = logits.float()
    entropy = torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)
    return _masked_mean(entropy / torch.log(torch.tensor(2.0)), mask)


# -- 9.12 grpo_advantages ------------------------------------------------------------------------------------------
def _advantages(rewards, group_size, scale, *, per_group=True, biased=False, strided=False):
    groups = rewards.float().view(group_size, -1).T if strided else rewards.float().view(-1, group_size)
    centre = groups.mean(dim=1, keepdim=True) if per_group else groups.mean()
    advantages = groups - centre
    if scale == "group":
        advantages = advantages / (groups.std(dim=1, keepdim=True, unbiased=not biased) + GRPO_STD_EPS)
    elif scale == "batch":
        advantages = advantages / (groups.std(unbiased=not biased) + GRPO_STD_EPS)
    return (advantages.T if strided else advantages).reshape(-1)


def grpo_advantages_not_per_group(rewards, group_size, scale="group"):
    return _advantages(rewards, group_size, scale, per_group=False)


def grpo_advantages_with_a_biased_std(rewards, group_size, scale="group"):
    return _advantages(rewards, group_size, scale, biased=True)


def grpo_advantages_of_strided_groups(rewards, group_size, scale="group"):
    return _advantages(rewards, group_size, scale, strided=True)


# -- 9.13 grpo_loss ------------------------------------------------------------------------------------------------
def _grpo(logprobs, old_logprobs, ref_logprobs, advantages, mask, beta, epsilon, epsilon_high, loss_type,
          max_completion_length, importance_weighted_kl, *, kl_k1=False, detached_ratio=False, grpo_as_bnpo=False,
          kl_sign=1):
    logprobs = logprobs.float()
    mask = mask.float()
    log_ratio = logprobs - old_logprobs.float()
    ratio = torch.exp(log_ratio.detach() if detached_ratio else log_ratio)
    high = epsilon if epsilon_high is None else epsilon_high
    a = advantages.float().unsqueeze(1)
    per_token = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - epsilon, 1 + high) * a)
    kl = torch.zeros_like(logprobs)
    if ref_logprobs is not None:
        log_ref_ratio = kl_sign * (ref_logprobs.float() - logprobs)
        kl = -log_ref_ratio if kl_k1 else torch.exp(log_ref_ratio) - log_ref_ratio - 1
        if importance_weighted_kl:
            kl = kl * ratio
        per_token = per_token + beta * kl
    if loss_type == "grpo" and not grpo_as_bnpo:
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type in ("grpo", "bnpo"):
        loss = (per_token * mask).sum() / mask.sum()
    else:
        loss = (per_token * mask).sum() / (logprobs.shape[0] * max_completion_length)
    return {"loss": loss, "kl": _masked_mean(kl.detach(), mask)}


def _grpo_variant(name, **flags):
    def variant(logprobs, old_logprobs, ref_logprobs, advantages, mask, beta=0.0, epsilon=0.2, epsilon_high=None,
                loss_type="grpo", max_completion_length=None, importance_weighted_kl=False):
        return _grpo(logprobs, old_logprobs, ref_logprobs, advantages, mask, beta, epsilon, epsilon_high, loss_type,
                     max_completion_length, importance_weighted_kl, **flags)
    variant.__name__ = name
    return variant


grpo_with_the_k1_kl = _grpo_variant("grpo_with_the_k1_kl", kl_k1=True)
grpo_with_a_detached_ratio = _grpo_variant("grpo_with_a_detached_ratio", detached_ratio=True)
grpo_averaging_over_tokens = _grpo_variant("grpo_averaging_over_tokens", grpo_as_bnpo=True)
grpo_with_the_kl_reversed = _grpo_variant("grpo_with_the_kl_reversed", kl_sign=-1)


_LOSS = _through(("chosen_rewards", "rejected_rewards"), "loss", None)
_DPO = _through(("policy_chosen_logps", "policy_rejected_logps"), "losses", None)
_GAE = _through(("values",), None, ("advantages", "returns"))
_KL = _through(("logprobs",), None, None)
_POLICY = _through(("logprobs",), "loss", None)
_VALUE = _through(("values",), "loss", None)

MUTANTS = {
    "per_token_log_probs": [log_probs_ignoring_the_temperature, log_probs_in_the_logits_dtype,
                            log_probs_multiplied_by_the_temperature],
    "sequence_log_probs": [sequence_log_probs_including_the_prompt, sequence_log_probs_without_the_shift,
                           sequence_log_probs_always_summed, sequence_log_probs_with_the_mask_shifted_the_wrong_way],
    "last_token_rewards": [last_token_rewards_at_the_count_of_tokens, last_token_rewards_at_the_last_position,
                           last_token_rewards_in_float32],
    "reward_loss_outputs": [_LOSS(m, "reward_loss_outputs") for m in (
        reward_loss_adding_the_margin, reward_loss_through_log_of_sigmoid, reward_loss_counting_ties_as_wins,
        reward_loss_summed)],
    "dpo_loss_outputs": [_DPO(m, "dpo_loss_outputs") for m in (
        dpo_without_the_reference, dpo_with_beta_outside_the_sigmoid, dpo_ipo_without_length_normalisation,
        dpo_smoothing_with_the_wrong_sign, dpo_rewards_not_detached, dpo_rewards_without_beta,
        dpo_counting_ties_as_wins)],
    "masked_whiten": [whiten_with_a_biased_variance, whiten_over_every_entry, whiten_leaving_the_outside_alone],
    "gae_outputs": [_GAE(m, "gae_outputs") for m in (
        gae_running_past_the_end, gae_discounting_values_by_lambda, gae_bootstrapping_the_last_token,
        gae_with_gradients)],
    "kl_penalized_rewards_outputs": [_KL(m, "kl_penalized_rewards_outputs") for m in (
        kl_rewards_with_the_sign_flipped, kl_rewards_scoring_the_last_position, kl_rewards_with_gradients)],
    "ppo_policy_loss_outputs": [_POLICY(m, "ppo_policy_loss_outputs") for m in (
        ppo_ratio_clipped_above_only, ppo_optimistic_minimum, ppo_mean_of_sequence_means, ppo_clipping_the_log_ratio)],
    "ppo_value_loss_outputs": [_VALUE(m, "ppo_value_loss_outputs") for m in (
        value_loss_clipped_around_the_returns, value_loss_without_the_half, value_loss_taking_the_smaller_error)],
    "masked_entropy": [entropy_over_every_token, entropy_of_the_logits_as_probabilities, entropy_in_bits],
    "grpo_advantages": [grpo_advantages_not_per_group, grpo_advantages_with_a_biased_std,
                        grpo_advantages_of_strided_groups],
    "grpo_loss_outputs": [_POLICY(m, "grpo_loss_outputs") for m in (
        grpo_with_the_k1_kl, grpo_with_a_detached_ratio, grpo_averaging_over_tokens, grpo_with_the_kl_reversed)],
}
