"""Reference solutions of Chapter 9 (``course_lib.alignment``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.alignment import GRPO_STD_EPS, WHITEN_EPS


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum()


def per_token_log_probs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return log_probs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def sequence_log_probs(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                       average: bool = False) -> torch.Tensor:
    token_logps = per_token_log_probs(logits[:, :-1], input_ids[:, 1:])     # (batch, seq - 1)
    mask = completion_mask[:, 1:].float()
    total = (token_logps * mask).sum(-1)
    return total / mask.sum(-1) if average else total


def last_token_rewards(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(scores.shape[1], device=scores.device)
    last = (positions * attention_mask.long()).argmax(-1)                   # (batch,)
    return scores[torch.arange(scores.shape[0], device=scores.device), last]


def reward_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                margin: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    difference = chosen_rewards.float() - rejected_rewards.float()
    if margin is not None:
        difference = difference - margin.float()
    return {"loss": -F.logsigmoid(difference).mean(),
            "accuracy": (chosen_rewards > rejected_rewards).float().mean()}


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_lengths: torch.Tensor | None = None,
             rejected_lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    chosen_logratios = policy_chosen_logps.float() - ref_chosen_logps.float()
    rejected_logratios = policy_rejected_logps.float() - ref_rejected_logps.float()
    h = chosen_logratios - rejected_logratios
    e = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - e) * F.logsigmoid(beta * h) - e * F.logsigmoid(-beta * h)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        h = chosen_logratios / chosen_lengths.float() - rejected_logratios / rejected_lengths.float()
        losses = (h - 1 / (2 * beta)) ** 2
    else:  # robust
        losses = (-(1 - e) * F.logsigmoid(beta * h) + e * F.logsigmoid(-beta * h)) / (1 - 2 * e)
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return {"losses": losses, "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards,
            "accuracy": (chosen_rewards > rejected_rewards).float().mean()}


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    weights = mask.to(values.dtype)
    count = weights.sum()
    mean = (values * weights).sum() / count
    variance = (((values - mean) * weights) ** 2).sum() / (count - 1)
    whitened = (values - mean) * torch.rsqrt(variance + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * weights


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    rewards, values, mask = rewards.detach().float(), values.detach().float(), mask.float()   # targets: no gradients
    advantages = torch.zeros_like(rewards)
    carried = torch.zeros_like(rewards[:, 0])                               # A_{t+1}
    for t in reversed(range(rewards.shape[1])):
        alive = mask[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(carried)
        next_value = values[:, t + 1] * alive if t + 1 < rewards.shape[1] else torch.zeros_like(carried)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        carried = (delta + gamma * lam * alive * carried) * mask[:, t]
        advantages[:, t] = carried
    return advantages, (advantages + values) * mask


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float = 0.05) -> dict[str, torch.Tensor]:
    mask = mask.float()
    kl = (logprobs.detach().float() - ref_logprobs.detach().float()) * mask             # rewards: no gradients
    rewards = -kl_coef * kl
    last = mask.sum(-1).long() - 1                                          # (batch,)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.detach().float()
    return {"rewards": rewards, "kl": kl}


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_range: float = 0.2) -> dict[str, torch.Tensor]:
    log_ratio = logprobs.float() - old_logprobs.float()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages.float() * ratio
    clipped = -advantages.float() * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    return {"loss": _masked_mean(torch.maximum(unclipped, clipped), mask),
            "clip_fraction": _masked_mean((clipped > unclipped).float(), mask).detach(),
            "approx_kl": _masked_mean(0.5 * log_ratio.detach() ** 2, mask)}


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip_range_value: float = 0.2) -> dict[str, torch.Tensor]:
    values, old_values, returns = values.float(), old_values.float(), returns.float()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    return {"loss": 0.5 * _masked_mean(torch.maximum(error, clipped_error), mask),
            "clip_fraction": _masked_mean((clipped_error > error).float(), mask).detach()}


def masked_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    entropy = torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)   # (batch, T)
    return _masked_mean(entropy, mask)


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    groups = rewards.float().view(-1, group_size)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale == "group":
        advantages = advantages / (groups.std(dim=1, keepdim=True) + GRPO_STD_EPS)
    elif scale == "batch":
        advantages = advantages / (groups.std() + GRPO_STD_EPS)
    return advantages.view(-1)


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, beta: float = 0.0, epsilon: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "grpo", max_completion_length: int | None = None,
              importance_weighted_kl: bool = False) -> dict[str, torch.Tensor]:
    logprobs = logprobs.float()
    mask = mask.float()
    ratio = torch.exp(logprobs - old_logprobs.float())
    high = epsilon if epsilon_high is None else epsilon_high
    a = advantages.float().unsqueeze(1)
    per_token = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - epsilon, 1 + high) * a)
    kl = torch.zeros_like(logprobs)
    if ref_logprobs is not None:
        log_ref_ratio = ref_logprobs.float() - logprobs
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
        if importance_weighted_kl:
            kl = kl * ratio
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum()
    else:  # dr_grpo
        loss = (per_token * mask).sum() / (logprobs.shape[0] * max_completion_length)
    return {"loss": loss, "kl": _masked_mean(kl.detach(), mask)}
