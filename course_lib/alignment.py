"""Chapter 9: preference alignment: reward models, DPO, PPO and GRPO.

A fine-tuned model (Chapter 7) answers in the right format; alignment makes it prefer the better of
two answers. Three families of methods do it, all built on the log-probability that the policy gives
a completion, and all held back by a reference model (the starting point) so that the policy does
not drift into text the reward was never checked on:

- **A reward model and the Bradley-Terry loss** (9.3-9.4): a scalar head on a language model, read at
  each sequence's last token (:func:`last_token_rewards`), trained so that
  ``P(chosen preferred) = sigmoid(r_chosen - r_rejected)`` (:func:`reward_loss`; Bradley and Terry,
  1952; Ouyang et al., 2022).
- **DPO** (9.1-9.2, 9.5): the KL-constrained reward maximisation solved in closed form, so that the
  policy itself is the reward model, ``r = beta * log(pi / pi_ref)``, trained on preference pairs with
  no sampling (:func:`dpo_loss`; Rafailov et al., 2023), and its variants: IPO's squared loss (Azar et
  al., 2024), conservative DPO's label smoothing and robust DPO (Chowdhury et al., 2024), the hinge.
- **PPO** (9.6-9.11): sample, score with a reward, fold a per-token KL penalty against the reference
  into the reward (:func:`kl_penalized_rewards`), estimate advantages with generalised advantage
  estimation (:func:`gae`, Schulman et al., 2016), whiten them (:func:`masked_whiten`), and take
  clipped steps on the policy (:func:`ppo_policy_loss`) and on a value head
  (:func:`ppo_value_loss`), watching the entropy (:func:`masked_entropy`) (Schulman et al., 2017;
  Ziegler et al., 2019).
- **GRPO** (9.12-9.13): no value head; several completions per prompt, each one's advantage its
  reward measured against its group's (:func:`grpo_advantages`), and PPO's clipped objective with a
  KL term (:func:`grpo_loss`; Shao et al., 2024), the method behind recent reasoning models.

Conventions used by every exercise of this chapter:

- **Sequences.** ``input_ids`` ``(batch, seq)`` holds a prompt followed by its completion, padded on
  the right; ``completion_mask`` ``(batch, seq)`` is 1 on the completion's tokens (its end-of-sequence
  token included) and 0 on the prompt and the padding, as in TRL. Logits ``(batch, seq, vocab)`` at
  position ``t`` predict the token at ``t + 1``.
- **Per-token tensors of the RL methods** cover the completion only: ``(batch, T)`` for ``T``
  completion positions, with a ``mask`` ``(batch, T)`` that is 1 on the tokens a sequence generated
  (a prefix of each row: a sequence that finished early is padded on the right) and 0 after.
- **A masked mean** averages over every token of the batch where the mask is 1 (a token-weighted
  mean, not a mean of per-sequence means) unless a function says otherwise.
- Log-probabilities and losses are float32 whatever the dtype of the logits. Inputs are never
  modified.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from course_lib.checks import check_bool, check_number, check_tensor
from course_lib.exercises import exercise
from course_lib.loop_settings import LoopSettings

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
GRPO_SCALES = ("group", "batch", "none")
WHITEN_EPS = 1e-8          # added to the variance before its square root (masked_whiten)
GRPO_STD_EPS = 1e-4        # added to the standard deviation of a group's rewards (grpo_advantages)


# -- validation: bad input is refused before an exercise runs, with the argument's name ----------------
def _check_same_shape(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    for name, tensor in zip(names[1:], tensors[1:]):
        if tensor.shape != tensors[0].shape:
            raise ValueError(f"{name} must have the shape of {names[0]}, {tuple(tensors[0].shape)}; "
                             f"got {tuple(tensor.shape)}")


def _check_mask(name: str, mask, shape: torch.Size) -> None:
    check_tensor(name, mask)
    if mask.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.is_floating_point():
        bad = ~((mask == 0) | (mask == 1))
    else:
        bad = (mask != 0) & (mask != 1)
    if bad.any():
        raise ValueError(f"{name} must hold only 0 and 1")


def _check_prefix_mask(name: str, mask: torch.Tensor) -> None:
    """Each row of ``mask`` must be ones then zeros (a finished sequence is padded on the right)."""
    ones = mask.bool()
    if (ones[:, 1:] & ~ones[:, :-1]).any():
        raise ValueError(f"each row of {name} must be 1s followed by 0s (a sequence padded on the right)")


def _check_batch_tokens(names: tuple[str, ...], tensors: tuple, mask_name: str, mask, *, prefix: bool = True) -> None:
    for name, tensor in zip(names, tensors):
        check_tensor(name, tensor, floating=True)
    if tensors[0].ndim != 2:
        raise ValueError(f"{names[0]} must be (batch, T), got shape {tuple(tensors[0].shape)}")
    _check_same_shape(names, tensors)
    _check_mask(mask_name, mask, tensors[0].shape)
    if prefix:
        _check_prefix_mask(mask_name, mask)
    if not mask.bool().any():
        raise ValueError(f"{mask_name} selects no token")


def _validate_per_token_log_probs(logits, labels, temperature=1.0) -> None:
    check_tensor("logits", logits, floating=True, min_ndim=1)
    check_tensor("labels", labels, integer=True)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape {tuple(logits.shape[:-1])} (logits without the vocabulary), "
                         f"got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[-1]}) (the vocabulary of logits)")
    check_number("temperature", temperature, 0.0, open_minimum=True)


def _validate_sequence_log_probs(logits, input_ids, completion_mask, average=False) -> None:
    check_tensor("logits", logits, floating=True)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (batch, seq, vocab), got shape {tuple(logits.shape)}")
    check_tensor("input_ids", input_ids, integer=True)
    if input_ids.shape != logits.shape[:2]:
        raise ValueError(f"input_ids must have shape {tuple(logits.shape[:2])}, got {tuple(input_ids.shape)}")
    _check_mask("completion_mask", completion_mask, input_ids.shape)
    if completion_mask[:, 0].bool().any():
        raise ValueError("completion_mask must be 0 at position 0: a completion follows a prompt")
    if not completion_mask.bool().any(dim=1).all():
        raise ValueError("every row of completion_mask needs at least one completion token")
    check_bool("average", average)


def _validate_last_token_rewards(scores, attention_mask) -> None:
    check_tensor("scores", scores, floating=True)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (batch, seq), got shape {tuple(scores.shape)}")
    _check_mask("attention_mask", attention_mask, scores.shape)
    if not attention_mask.bool().any(dim=1).all():
        raise ValueError("every row of attention_mask needs at least one token")


def _validate_pairs(chosen_name, chosen, rejected_name, rejected) -> None:
    check_tensor(chosen_name, chosen, floating=True)
    check_tensor(rejected_name, rejected, floating=True)
    if chosen.ndim != 1 or not chosen.numel():
        raise ValueError(f"{chosen_name} must be a non-empty 1-d tensor (batch,), got shape {tuple(chosen.shape)}")
    _check_same_shape((chosen_name, rejected_name), (chosen, rejected))


def _validate_reward_loss(chosen_rewards, rejected_rewards, margin=None) -> None:
    _validate_pairs("chosen_rewards", chosen_rewards, "rejected_rewards", rejected_rewards)
    if margin is not None:
        check_tensor("margin", margin, floating=True)
        _check_same_shape(("chosen_rewards", "margin"), (chosen_rewards, margin))


def _validate_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                       beta=0.1, loss_type="sigmoid", label_smoothing=0.0, chosen_lengths=None,
                       rejected_lengths=None) -> None:
    _validate_pairs("policy_chosen_logps", policy_chosen_logps, "policy_rejected_logps", policy_rejected_logps)
    _validate_pairs("ref_chosen_logps", ref_chosen_logps, "ref_rejected_logps", ref_rejected_logps)
    _check_same_shape(("policy_chosen_logps", "ref_chosen_logps"), (policy_chosen_logps, ref_chosen_logps))
    check_number("beta", beta, 0.0, open_minimum=True)
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    check_number("label_smoothing", label_smoothing, 0.0, 0.5)
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ValueError(f"label_smoothing applies to the 'sigmoid' and 'robust' losses, not {loss_type!r}")
    if loss_type == "robust" and label_smoothing >= 0.5:
        raise ValueError("the 'robust' loss needs label_smoothing < 0.5")
    for name, lengths in (("chosen_lengths", chosen_lengths), ("rejected_lengths", rejected_lengths)):
        if loss_type == "ipo" and lengths is None:
            raise ValueError(f"the 'ipo' loss needs {name} (the completions' token counts)")
        if lengths is not None:
            check_tensor(name, lengths)
            _check_same_shape(("policy_chosen_logps", name), (policy_chosen_logps, lengths))
            if (lengths < 1).any():
                raise ValueError(f"{name} must be at least 1")


def _validate_masked_whiten(values, mask, shift_mean=True) -> None:
    check_tensor("values", values, floating=True)
    _check_mask("mask", mask, values.shape)
    if int(mask.bool().sum()) < 2:
        raise ValueError("mask must select at least two values (a variance needs two)")
    check_bool("shift_mean", shift_mean)


def _validate_gae(rewards, values, mask, gamma=1.0, lam=0.95) -> None:
    _check_batch_tokens(("rewards", "values"), (rewards, values), "mask", mask)
    check_number("gamma", gamma, 0.0, 1.0)
    check_number("lam", lam, 0.0, 1.0)


def _validate_kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.05) -> None:
    _check_batch_tokens(("logprobs", "ref_logprobs"), (logprobs, ref_logprobs), "mask", mask)
    check_tensor("scores", scores, floating=True)
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(f"scores must be (batch,) = {tuple(logprobs.shape[:1])}, got {tuple(scores.shape)}")
    if not mask.bool().any(dim=1).all():
        raise ValueError("every row of mask needs at least one token (the one that gets the score)")
    check_number("kl_coef", kl_coef, 0.0)


def _validate_ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2) -> None:
    _check_batch_tokens(("logprobs", "old_logprobs", "advantages"), (logprobs, old_logprobs, advantages), "mask",
                        mask)
    check_number("clip_range", clip_range, 0.0, 1.0, open_minimum=True)


def _validate_ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.2) -> None:
    _check_batch_tokens(("values", "old_values", "returns"), (values, old_values, returns), "mask", mask)
    check_number("clip_range_value", clip_range_value, 0.0, open_minimum=True)


def _validate_masked_entropy(logits, mask) -> None:
    check_tensor("logits", logits, floating=True)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (batch, T, vocab), got shape {tuple(logits.shape)}")
    _check_mask("mask", mask, logits.shape[:2])
    if not mask.bool().any():
        raise ValueError("mask selects no token")


def _validate_grpo_advantages(rewards, group_size, scale="group") -> None:
    check_tensor("rewards", rewards, floating=True)
    if rewards.ndim != 1 or not rewards.numel():
        raise ValueError(f"rewards must be a non-empty 1-d tensor, got shape {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (a group compares completions), got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"rewards ({rewards.numel()}) must hold whole groups of group_size={group_size}")
    if scale not in GRPO_SCALES:
        raise ValueError(f"scale must be one of {GRPO_SCALES}, got {scale!r}")


def _validate_grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, beta=0.0, epsilon=0.2,
                        epsilon_high=None, loss_type="grpo", max_completion_length=None,
                        importance_weighted_kl=False) -> None:
    _check_batch_tokens(("logprobs", "old_logprobs"), (logprobs, old_logprobs), "mask", mask)
    if ref_logprobs is not None:
        check_tensor("ref_logprobs", ref_logprobs, floating=True)
        _check_same_shape(("logprobs", "ref_logprobs"), (logprobs, ref_logprobs))
    check_tensor("advantages", advantages, floating=True)
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be (batch,) = {tuple(logprobs.shape[:1])}, got {tuple(advantages.shape)}")
    check_number("beta", beta, 0.0)
    if beta and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (the KL term is measured against the reference)")
    check_number("epsilon", epsilon, 0.0, 1.0, open_minimum=True)
    if epsilon_high is not None:
        check_number("epsilon_high", epsilon_high, 0.0, open_minimum=True)
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {GRPO_LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "dr_grpo":
        if isinstance(max_completion_length, bool) or not isinstance(max_completion_length, int):
            raise ValueError("the 'dr_grpo' loss needs max_completion_length, an int")
        if max_completion_length < logprobs.shape[1]:
            raise ValueError(f"max_completion_length ({max_completion_length}) must be at least T = {logprobs.shape[1]}")
    check_bool("importance_weighted_kl", importance_weighted_kl)


# -- 9.1-9.2 log-probabilities of completions ------------------------------------------------------------
@exercise("9.1", points=1, validate=_validate_per_token_log_probs)
def per_token_log_probs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The log-probability of each label under the distribution its logits define.

    Args:
        logits: ``(..., vocab)``, any floating dtype.
        labels: ``(...)`` integer token ids in ``[0, vocab)``: one per row of ``logits``.
        temperature: the logits are divided by it first (a policy sampled at temperature ``T`` has
            these log-probabilities, so an RL update must use the same ``T``).

    Returns:
        float32 ``(...)``: ``log_softmax(logits / temperature)[..., label]``, computed in float32 (a
        bfloat16 log-softmax keeps about two significant digits). TRL's ``selective_log_softmax``.

    Hint:
        ``log_softmax`` then ``gather`` along the last dimension (``labels.unsqueeze(-1)``).
    """
    raise NotImplementedError("Exercise 9.1: implement per_token_log_probs in alignment.py")


@exercise("9.2", points=2, validate=_validate_sequence_log_probs)
def sequence_log_probs(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                       average: bool = False) -> torch.Tensor:
    """The log-probability of each row's completion given its prompt: ``log pi(y | x)``.

    Args:
        logits: ``(batch, seq, vocab)``, the model's output on ``input_ids``.
        input_ids: ``(batch, seq)``, prompt then completion then padding.
        completion_mask: ``(batch, seq)``, 1 on the completion's tokens (0 at position 0).
        average: return the mean over the completion's tokens instead of the sum.

    Returns:
        float32 ``(batch,)``: the sum (or mean) over the positions ``t >= 1`` with
        ``completion_mask[:, t] == 1`` of the log-probability of ``input_ids[:, t]`` under the logits
        at ``t - 1`` (your :func:`per_token_log_probs`). Neither the prompt's tokens nor the padding
        count, whatever the padding holds. DPO's ``logps/chosen`` are these sums.

    Hint:
        Shift once: the logits of positions ``0 .. seq-2`` score the tokens ``1 .. seq-1``, and the
        mask that selects them is ``completion_mask[:, 1:]``.
    """
    raise NotImplementedError("Exercise 9.2: implement sequence_log_probs in alignment.py")


# -- 9.3-9.4 the reward model -----------------------------------------------------------------------
@exercise("9.3", points=1, validate=_validate_last_token_rewards)
def last_token_rewards(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A reward model's output: the score at each sequence's last real token.

    Args:
        scores: ``(batch, seq)``, the scalar head's output at every position.
        attention_mask: ``(batch, seq)``, 1 on real tokens; the padding may sit on the right or on the
            left.

    Returns:
        ``(batch,)`` in ``scores``' dtype: ``scores[b, t_b]`` with ``t_b`` the last position where
        ``attention_mask[b]`` is 1: the token that has read the whole sequence (what
        ``transformers``' ``...ForSequenceClassification`` pools).

    Hint:
        The last 1 of a row is the ``argmax`` of ``position * mask``.
    """
    raise NotImplementedError("Exercise 9.3: implement last_token_rewards in alignment.py")


@exercise("9.4", points=2, validate=_validate_reward_loss, entry="reward_loss_outputs")
def reward_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                margin: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The Bradley-Terry loss of a reward model on preference pairs, and its accuracy.

    Args:
        chosen_rewards: ``(batch,)``, the reward of each pair's preferred completion.
        rejected_rewards: ``(batch,)``, the reward of the other one.
        margin: ``(batch,)`` or ``None``: how much the chosen must win by (Llama 2's margin for
            "significantly better" pairs).

    Returns:
        ``{"loss", "accuracy"}``, 0-dim tensors: ``loss`` the mean over pairs of
        ``-log sigmoid(chosen - rejected - margin)`` (the negative log-likelihood of the preferences
        under Bradley-Terry, with gradients; TRL's ``RewardTrainer`` loss), ``accuracy`` the fraction
        of pairs with ``chosen > rejected`` (a tie counts as wrong), float32.

    Hint:
        ``F.logsigmoid`` is exact where ``log(sigmoid(x))`` underflows for very negative ``x``.
    """
    raise NotImplementedError("Exercise 9.4: implement reward_loss in alignment.py")


# -- 9.5 DPO --------------------------------------------------------------------------------------------
@exercise("9.5", points=3, validate=_validate_dpo_loss, entry="dpo_loss_outputs")
def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_lengths: torch.Tensor | None = None,
             rejected_lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Direct preference optimisation's loss on a batch of pairs, from sequence log-probabilities.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(batch,)``, :func:`sequence_log_probs` (sums) of
            each pair's chosen and rejected completion under the policy being trained.
        ref_chosen_logps, ref_rejected_logps: ``(batch,)``, the same under the frozen reference model.
        beta: the strength of the KL constraint (small ``beta``: the policy may move far).
        loss_type: with ``h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)``:

            - ``"sigmoid"`` (DPO): ``-log sigmoid(beta h)``; with ``label_smoothing = e`` (conservative
              DPO, which assumes a fraction ``e`` of the labels flipped):
              ``-(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)``.
            - ``"hinge"`` (SLiC): ``max(0, 1 - beta h)``.
            - ``"ipo"``: ``(h' - 1 / (2 beta))^2`` where ``h'`` divides each log-ratio by its
              completion's length first (``chosen_lengths``, ``rejected_lengths``, needed here).
            - ``"robust"`` (robust DPO, an unbiased loss under a flip rate ``e = label_smoothing``):
              ``(-(1 - e) log sigmoid(beta h) + e log sigmoid(-beta h)) / (1 - 2 e)``.
        label_smoothing: ``e`` in ``[0, 0.5)``, for ``"sigmoid"`` and ``"robust"`` only.
        chosen_lengths, rejected_lengths: ``(batch,)`` token counts of the completions (for ``"ipo"``).

    Returns:
        ``{"losses", "chosen_rewards", "rejected_rewards", "accuracy"}``: ``losses`` ``(batch,)``,
        one per pair, with gradients to the policy's log-probabilities (the training loss is their
        mean); the implicit rewards ``beta * (policy - ref)`` of each chosen and rejected completion
        ``(batch,)``, detached; ``accuracy``, 0-dim float32, the fraction of pairs whose chosen reward
        is the higher (a tie counts as wrong). TRL's ``DPOTrainer`` computes and logs the same.

    Hint:
        Everything is a function of the two log-ratios ``policy - ref``; write them once.
    """
    raise NotImplementedError("Exercise 9.5: implement dpo_loss in alignment.py")


# -- 9.6-9.11 PPO -----------------------------------------------------------------------------------
@exercise("9.6", points=1, validate=_validate_masked_whiten)
def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``values`` rescaled to unit variance (and zero mean) over the positions where ``mask`` is 1.

    Args:
        values: any shape, floating.
        mask: ``values``' shape, 0/1: which entries count (at least two).
        shift_mean: subtract the mean; ``False`` divides by the standard deviation but keeps the mean
            (how returns are scaled without moving them).

    Returns:
        ``values``' shape and dtype: ``(values - mean) / sqrt(var + 1e-8)`` (plus ``mean`` again when not
        ``shift_mean``) where ``mask`` is 1, and 0 where it is 0. ``mean`` and ``var`` are taken over
        the masked entries only, ``var`` with Bessel's correction (divided by ``n - 1``).

    Hint:
        A masked sum is ``(values * mask).sum()``; the count is ``mask.sum()``.
    """
    raise NotImplementedError("Exercise 9.6: implement masked_whiten in alignment.py")


@exercise("9.7", points=3, validate=_validate_gae, entry="gae_outputs")
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the tokens of each generated sequence.

    Args:
        rewards: ``(batch, T)``, the reward of each token (the KL penalty, and the score at the last).
        values: ``(batch, T)``, the value head's estimate ``V(s_t)`` before each token.
        mask: ``(batch, T)``, 1 on the tokens each sequence generated, then 0 after it finished.
        gamma: the discount; ``lam``: GAE's ``lambda`` (0: one-step TD errors, 1: Monte Carlo).

    Returns:
        ``(advantages, returns)``, each ``(batch, T)`` float32. With ``delta_t = r_t + gamma V_{t+1} -
        V_t`` and ``A_t = delta_t + gamma lam A_{t+1}``, where past a sequence's last token both
        ``V_{t+1}`` and ``A_{t+1}`` are 0 (the episode has ended: whatever ``rewards`` and ``values``
        hold there is never read). ``returns = advantages + values``. Both are 0 where ``mask`` is 0.
        Computed without gradients (they are targets).

    Hint:
        Walk ``t`` from ``T - 1`` down to 0, carrying ``A_{t+1}``; multiplying the next value and the
        carried advantage by ``mask[:, t + 1]`` stops a finished sequence at its end.
    """
    raise NotImplementedError("Exercise 9.7: implement gae in alignment.py")


@exercise("9.8", points=2, validate=_validate_kl_penalized_rewards, entry="kl_penalized_rewards_outputs")
def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float = 0.05) -> dict[str, torch.Tensor]:
    """Per-token rewards for PPO: a KL penalty against the reference at every token, and the
    sequence's score at its last.

    Args:
        scores: ``(batch,)``, the reward model's (or a checker's) score of each whole sequence.
        logprobs: ``(batch, T)``, the log-probability of each generated token under the policy that
            sampled it; ``ref_logprobs``: the same under the reference model.
        mask: ``(batch, T)``, 1 on the tokens each sequence generated.
        kl_coef: the weight of the KL penalty.

    Returns:
        ``{"rewards", "kl"}``, each ``(batch, T)`` float32, 0 where ``mask`` is 0: ``kl = logprobs -
        ref_logprobs`` (an unbiased one-sample estimate of the KL of the sampled token), and
        ``rewards = -kl_coef * kl`` with ``scores[b]`` added at the last token of row ``b``. Without
        gradients.

    Hint:
        The last token of a row is at ``mask[b].sum() - 1``.
    """
    raise NotImplementedError("Exercise 9.8: implement kl_penalized_rewards in alignment.py")


@exercise("9.9", points=2, validate=_validate_ppo_policy_loss, entry="ppo_policy_loss_outputs")
def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_range: float = 0.2) -> dict[str, torch.Tensor]:
    """PPO's clipped surrogate objective, as a loss to minimise.

    Args:
        logprobs: ``(batch, T)``, the current policy's log-probability of each sampled token (with
            gradients).
        old_logprobs: ``(batch, T)``, the same under the policy that sampled them.
        advantages: ``(batch, T)``, each token's advantage.
        mask: ``(batch, T)``, 1 on the tokens each sequence generated.
        clip_range: ``epsilon``: the ratio ``pi / pi_old`` is clipped to ``[1 - epsilon, 1 + epsilon]``.

    Returns:
        ``{"loss", "clip_fraction", "approx_kl"}``, 0-dim float32: ``loss`` the masked mean of
        ``max(-A r, -A clip(r, 1 - epsilon, 1 + epsilon))`` with ``r = exp(logprobs - old_logprobs)``
        (with gradients), ``clip_fraction`` the masked mean of the tokens where the clipped term is
        the larger (strictly), ``approx_kl`` the masked mean of ``(logprobs - old_logprobs)^2 / 2``,
        both detached.

    Hint:
        The maximum of the two negated terms is the pessimistic bound: clipping never helps the
        objective, on either sign of the advantage.
    """
    raise NotImplementedError("Exercise 9.9: implement ppo_policy_loss in alignment.py")


@exercise("9.10", points=2, validate=_validate_ppo_value_loss, entry="ppo_value_loss_outputs")
def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip_range_value: float = 0.2) -> dict[str, torch.Tensor]:
    """PPO's clipped value loss.

    Args:
        values: ``(batch, T)``, the value head's current predictions (with gradients).
        old_values: ``(batch, T)``, its predictions when the batch was sampled.
        returns: ``(batch, T)``, the targets (:func:`gae`'s returns).
        mask: ``(batch, T)``, 1 on the tokens each sequence generated.
        clip_range_value: how far a prediction may move from ``old_values`` before its error stops
            improving.

    Returns:
        ``{"loss", "clip_fraction"}``, 0-dim float32: ``loss`` half the masked mean of
        ``max((values - returns)^2, (v_clipped - returns)^2)`` with ``v_clipped = old_values +
        clip(values - old_values, -c, c)`` (with gradients); ``clip_fraction`` the masked mean of the
        tokens where the clipped error is the larger (strictly), detached.

    Hint:
        Same pessimism as the policy's loss: the larger of the two errors.
    """
    raise NotImplementedError("Exercise 9.10: implement ppo_value_loss in alignment.py")


@exercise("9.11", points=1, validate=_validate_masked_entropy)
def masked_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean entropy of the policy's next-token distributions over the generated tokens.

    Args:
        logits: ``(batch, T, vocab)``, the logits that predicted each generated token.
        mask: ``(batch, T)``, 1 on the tokens each sequence generated.

    Returns:
        0-dim float32: the masked mean over tokens of ``H = -sum_v p_v log p_v`` with ``p =
        softmax(logits)`` (computed in float32), in nats. A policy collapsing onto one answer shows it
        here first.

    Hint:
        ``H = logsumexp(z) - sum_v softmax(z)_v z_v`` needs no ``log 0``.
    """
    raise NotImplementedError("Exercise 9.11: implement masked_entropy in alignment.py")


# -- 9.12-9.13 GRPO ---------------------------------------------------------------------------------
@exercise("9.12", points=2, validate=_validate_grpo_advantages)
def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """Each completion's advantage relative to the other completions of its prompt.

    Args:
        rewards: ``(n_prompts * group_size,)``, the rewards of ``group_size`` completions per prompt,
            each prompt's completions next to each other.
        group_size: completions per prompt (``num_generations`` in TRL), at least 2.
        scale: ``"group"``: divide by the standard deviation of the group's rewards; ``"batch"``: by
            that of all rewards; ``"none"``: do not divide (Dr. GRPO's choice, Liu et al., 2025).

    Returns:
        float32, ``rewards``' shape: ``rewards - mean of the group``, divided by ``std + 1e-4`` where
        scaled. Standard deviations are unbiased (``n - 1``). A group whose completions all got the
        same reward has advantage 0 everywhere: it teaches nothing. TRL's ``GRPOTrainer`` computes the same.

    Hint:
        ``rewards.view(-1, group_size)`` puts one group in each row.
    """
    raise NotImplementedError("Exercise 9.12: implement grpo_advantages in alignment.py")


@exercise("9.13", points=3, validate=_validate_grpo_loss, entry="grpo_loss_outputs")
def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, beta: float = 0.0, epsilon: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "grpo", max_completion_length: int | None = None,
              importance_weighted_kl: bool = False) -> dict[str, torch.Tensor]:
    """GRPO's loss: PPO's clipped objective with one advantage per sequence, and a KL term.

    Args:
        logprobs: ``(batch, T)``, the policy's log-probability of each generated token (with gradients).
        old_logprobs: ``(batch, T)``, the same under the policy that sampled them.
        ref_logprobs: ``(batch, T)`` under the reference model, or ``None`` when ``beta`` is 0.
        advantages: ``(batch,)``, :func:`grpo_advantages`, shared by every token of a sequence.
        mask: ``(batch, T)``, 1 on the tokens each sequence generated.
        beta: the weight of the KL term (0: none, as TRL's default).
        epsilon, epsilon_high: the ratio is clipped to ``[1 - epsilon, 1 + epsilon_high]``
            (``epsilon_high`` defaults to ``epsilon``; DAPO raises it).
        loss_type: how per-token losses are averaged: ``"grpo"``, the mean over sequences of each
            sequence's masked mean; ``"bnpo"``, the masked mean over every token of the batch;
            ``"dr_grpo"``, the masked sum divided by ``batch * max_completion_length``.
        max_completion_length: the generation budget, for ``"dr_grpo"``.
        importance_weighted_kl: multiply each token's ``kl_t`` by ``r`` (with its gradient): ``k3`` is
            unbiased for tokens drawn from the policy itself, and these were drawn from the old one
            (TRL's ``use_bias_correction_kl``, on by default there).

    Returns:
        ``{"loss", "kl"}``, 0-dim float32. Per token, with ``r = exp(logprobs - old_logprobs)``:
        ``-min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A) + beta * kl_t`` where ``kl_t =
        exp(ref - logprobs) - (ref - logprobs) - 1`` (Schulman's ``k3`` estimator of the KL to the
        reference: unbiased and never negative; times ``r`` when ``importance_weighted_kl``). ``loss`` is
        averaged as ``loss_type`` says (with gradients); ``kl`` is the masked mean of ``kl_t`` over the
        batch's tokens (0 when ``ref_logprobs`` is ``None``), detached. TRL's ``GRPOTrainer`` loss with
        ``importance_sampling_level="token"``.

    Hint:
        With one update per batch of samples, ``old_logprobs`` equals ``logprobs.detach()``: the ratio
        is 1 but its gradient is not zero.
    """
    raise NotImplementedError("Exercise 9.13: implement grpo_loss in alignment.py")


# -- the functions the tests call: plain data in, plain data out ---------------------------------------------
def run_with_gradients(fn: Callable, wrt: Sequence[str], loss: str | None, output_names: Sequence[str] | None,
                       *args, **kwargs) -> dict:
    """Call ``fn(*args, **kwargs)`` with the tensor arguments named in ``wrt`` made leaves that require
    gradients (copies: the caller's tensors are left alone). Returns its outputs by name (detached; a tuple
    is named by ``output_names``), ``"requires_grad"``: which outputs carry a gradient, and, when ``loss``
    names an output, ``"grads"``: the gradients of that output's sum to each argument of ``wrt``
    (``None`` where it does not reach one)."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    for name in wrt:
        bound.arguments[name] = bound.arguments[name].detach().clone().requires_grad_(True)
    outputs = fn(*bound.args, **bound.kwargs)
    if not isinstance(outputs, dict):
        outputs = dict(zip(output_names, outputs))
    result = {"outputs": {k: v.detach() for k, v in outputs.items()},
              "requires_grad": {k: bool(v.requires_grad) for k, v in outputs.items()}}
    if loss is not None:
        if outputs[loss].requires_grad:
            outputs[loss].sum().backward()
        result["grads"] = {name: bound.arguments[name].grad for name in wrt}
    return result


def reward_loss_outputs(*args, **kwargs) -> dict:
    """How the tests run your :func:`reward_loss` (9.4): :func:`run_with_gradients`, the loss's
    gradients to both rewards."""
    return run_with_gradients(reward_loss, ("chosen_rewards", "rejected_rewards"), "loss", None, *args, **kwargs)


def dpo_loss_outputs(*args, **kwargs) -> dict:
    """How the tests run your :func:`dpo_loss` (9.5): :func:`run_with_gradients`, the gradients of the
    losses' sum to the policy's log-probabilities."""
    return run_with_gradients(dpo_loss, ("policy_chosen_logps", "policy_rejected_logps"), "losses", None,
                              *args, **kwargs)


def gae_outputs(*args, **kwargs) -> dict:
    """How the tests run your :func:`gae` (9.7): :func:`run_with_gradients` with ``values`` requiring
    gradients (the outputs must not carry them)."""
    return run_with_gradients(gae, ("values",), None, ("advantages", "returns"), *args, **kwargs)


def kl_penalized_rewards_outputs(*args, **kwargs) -> dict:
    """How the tests run your :func:`kl_penalized_rewards` (9.8): :func:`run_with_gradients` with
    ``logprobs`` requiring gradients (the outputs must not carry them)."""
    return run_with_gradients(kl_penalized_rewards, ("logprobs",), None, None, *args, **kwargs)


def ppo_policy_loss_outputs(*args, **kwargs) -> dict:
    """How the tests run your :func:`ppo_policy_loss` (9.9): :func:`run_with_gradients`, the loss's
    gradient to ``logprobs``."""
    return run_with_gradients(ppo_policy_loss, ("logprobs",), "loss", None, *args, **kwargs)


def ppo_value_loss_outputs(*args, **kwargs) -> dict:
    """How the tests run your :func:`ppo_value_loss` (9.10): :func:`run_with_gradients`, the loss's
    gradient to ``values``."""
    return run_with_gradients(ppo_value_loss, ("values",), "loss", None, *args, **kwargs)


def grpo_loss_outputs(*args, **kwargs) -> dict:
    """How the tests run your :func:`grpo_loss` (9.13): :func:`run_with_gradients`, the loss's gradient
    to ``logprobs``."""
    return run_with_gradients(grpo_loss, ("logprobs",), "loss", None, *args, **kwargs)


# -- rollouts and preference pairs: the data of the course's aligned models ---------------------------------
def sample_completions(model: torch.nn.Module, prompts: Sequence[list[int]], *, k: int, max_new_tokens: int,
                       stop_ids: Sequence[int], pad_token_id: int, seed: int, temperature: float = 1.0,
                       batch_size: int = 64) -> list[list[list[int]]]:
    """``k`` completions of each prompt (token ids) drawn by Chapter 4's :func:`~course_lib.generation.sample`
    (a KV cache, left-padded batches of ``batch_size`` sequences): for prompt ``i``, ``k`` lists of the new
    token ids, each ending with the first id of ``stop_ids`` it produced (kept: the policy learns to stop)
    or cut at ``max_new_tokens``. Seeded per batch, so the same arguments draw the same completions."""
    from course_lib.generation import sample
    from course_lib.tasks import pad_batch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stops = set(stop_ids)
    flat = [list(p) for p in prompts for _ in range(k)]
    completions = []
    for start in range(0, len(flat), batch_size):
        input_ids, attention_mask = pad_batch(flat[start:start + batch_size], pad_token_id, left=True)
        out = sample(model, input_ids.to(device), attention_mask.to(device), max_new_tokens=max_new_tokens,
                     seed=seed + start, temperature=temperature, eos_token_id=list(stop_ids), pad_token_id=pad_token_id)
        for row in out[:, input_ids.shape[1]:].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            completions.append(row[:end])
    model.train(was_training)
    return [completions[i * k:(i + 1) * k] for i in range(len(prompts))]


def completion_batch(prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_token_id: int
                     ) -> dict[str, torch.Tensor]:
    """Prompt-then-completion rows padded on the right: ``{"input_ids", "attention_mask",
    "completion_mask"}``, each ``(n, longest)`` int64, as the exercises take them."""
    from course_lib.tasks import pad_batch

    rows = [list(p) + list(c) for p, c in zip(prompts, completions)]
    input_ids, attention_mask = pad_batch(rows, pad_token_id)
    completion_mask = torch.zeros_like(input_ids)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        completion_mask[i, len(p):len(p) + len(c)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def batch_log_probs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`sequence_log_probs` (sums) of a :func:`completion_batch` under ``model``: ``(n,)`` float32, with
    gradients when they are enabled."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_log_probs(logits, batch["input_ids"], batch["completion_mask"])


def gold_completion(example: dict, stop_ids: Sequence[int]) -> list[int]:
    """The data set's own answer to a rendered example (:func:`~course_lib.sft.render_examples`): the tokens
    after its prompt, up to and including the token that ends the assistant's turn."""
    answer = example["input_ids"][len(example["prompt_ids"]):]
    end = next((i + 1 for i, t in enumerate(answer) if t in set(stop_ids)), len(answer))
    return answer[:end]


def preference_pairs(model: torch.nn.Module, tokenizer, rows: Sequence[dict], samples: int = 4,
                     max_new_tokens: int = 12, seed: int = 0) -> list[dict]:
    """Preference pairs from the model's own answers, judged by Chapter 6's checkers
    (:func:`~course_lib.instruction_data.check_answer`).

    ``samples`` answers are drawn for each row's question (:func:`sample_completions`). A row with at
    least one wrong answer gives one pair: ``rejected`` its first wrong answer, ``chosen`` its first right
    answer when it has one (``"chosen_source": "sample"``, on-policy) and otherwise the data set's answer
    (``"gold"``). Rows the model always answers right teach no preference and give none. Each pair:
    ``{"id", "family", "prompt_ids", "chosen_ids", "rejected_ids", "chosen", "rejected", "chosen_source"}``."""
    from course_lib.instruction_data import check_answer
    from course_lib.sft import end_token_ids, render_examples

    stops = end_token_ids(tokenizer)
    examples = render_examples(rows, tokenizer)
    drawn = sample_completions(model, [e["prompt_ids"] for e in examples], k=samples, max_new_tokens=max_new_tokens,
                               stop_ids=stops, pad_token_id=tokenizer.pad_token_id, seed=seed)
    pairs = []
    for row, example, completions in zip(rows, examples, drawn):
        texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        right = [check_answer(row["family"], row, t) for t in texts]
        if all(right):
            continue
        rejected = right.index(False)
        if any(right):
            chosen_ids, source = completions[right.index(True)], "sample"
        else:
            chosen_ids, source = gold_completion(example, stops), "gold"
        pairs.append({"id": row["id"], "family": row["family"], "prompt_ids": example["prompt_ids"],
                      "chosen_ids": chosen_ids, "rejected_ids": completions[rejected],
                      "chosen": tokenizer.decode(chosen_ids, skip_special_tokens=True), "rejected": texts[rejected],
                      "chosen_source": source})
    return pairs


def pair_batch(pairs: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """:func:`completion_batch` of the pairs' chosen completions followed by their rejected ones (TRL's
    layout: rows ``0 .. n-1`` chosen, ``n .. 2n-1`` rejected), with ``"lengths"`` ``(2n,)``: each
    completion's token count."""
    prompts = [p["prompt_ids"] for p in pairs] * 2
    completions = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
    batch = completion_batch(prompts, completions, pad_token_id)
    return batch | {"lengths": torch.tensor([len(c) for c in completions])}


# -- the course's aligned models: Chapter 7's chat model taught to prefer right answers ---------------------
# Bump when an aligned model or its report changes in a way that should rebuild the cache.
ALIGN_VERSION = 2  # 2: the record's example pairs, two per family
_ALIGN_MODULES = ("numerics", "attention", "transformer", "generation", "pretraining", "instruct", "sft", "alignment")


@dataclass
class AlignConfig(LoopSettings):
    """One alignment run from Chapter 7's chat model (``sft_course_lm(base)``).

    ``"dpo"``: preference pairs from the model's own answers to the training questions
    (:func:`training_questions`; :func:`preference_pairs`, ``samples`` answers each), then ``total_steps`` steps of ``batch_size``
    pairs on :func:`dpo_loss` against the frozen starting model. ``"grpo"``: each step draws
    ``group_size`` answers to each of ``prompts_per_step`` questions, scores them with Chapter 6's
    checkers (1 right, 0 wrong) and takes one step on :func:`grpo_loss`. ``"ppo"``: :func:`train_ppo`, each
    round one answer to each of ``prompts_per_step * group_size`` questions scored by ``checker``
    (:data:`CHECKERS`), ``beta`` the KL penalty's coefficient. Chapter 5's optimizer, schedule and
    clipping (:func:`~course_lib.pretraining.make_optimizer`, ...) run them all.
    """

    method: str = "dpo"
    base: str = "cpu"                       # the sft_course_lm preset to start from
    # training questions per family, as Chapter 7's sft.training_rows reads it (a dict: only those families)
    train_examples: int | dict[str, int | None] | None = dataclasses.field(default_factory=lambda: {"naming": None})
    source: str | None = None               # corpus source of the string family (Chapter 6)
    samples: int = 4                        # answers drawn per question for the pairs (dpo)
    beta: float = 0.1                       # dpo: the KL constraint; grpo: the KL term's weight; ppo: the KL penalty's
    loss_type: str = "sigmoid"              # dpo_loss's or grpo_loss's loss_type
    sft_weight: float = 0.0                 # dpo: plus this times the chosen answers' per-token NLL (RPO)
    batch_size: int = 16                    # dpo: pairs per step
    group_size: int = 8                     # grpo: answers per question
    prompts_per_step: int = 8               # grpo: questions per step
    temperature: float = 1.0                # sampling temperature of the answers
    epsilon: float = 0.2                    # grpo's and ppo's clip range
    checker: str = "exact"                  # ppo: the reward, a key of CHECKERS
    total_steps: int = 150                  # Chapter 5's loop settings (LoopSettings), these four its own
    warmup_steps: int = 10
    lr: float = 3e-4
    weight_decay: float = 0.0
    max_new_tokens: int = 12
    test_examples: int = 100                # held-out questions per family in the report
    seed: int = 0


# Measured on one CPU thread, from Chapter 7's chat model (naming: 73 % greedy and 61-64 % of sampled answers right
# on held-out questions). Other settings tried, and what they gave: book/alignment.md, "The aligned models".
ALIGN_PRESETS: dict[str, AlignConfig] = {
    # pairs from every family (naming: all 727 questions; 100 of each other), so that the format holds, and
    # the chosen answers' NLL (without it: naming 74 % greedy but 51 % sampled, KL 3.7, the chosen answers'
    # likelihood falling with the rejected ones'): naming 74 % greedy, 73 % sampled, KL 0.62; about 3 CPU
    # minutes with the pairs
    "dpo-cpu": AlignConfig(method="dpo", train_examples={"naming": None, "arithmetic": 100, "string": 100,
                                                         "sorting": 100, "stdlib": 100}, beta=0.3, lr=3e-4,
                           sft_weight=1.0),
    "reward-cpu": AlignConfig(method="reward", lr=3e-4, total_steps=100),
    # naming, 8 questions x 8 answers per step: naming 70 % greedy, 70.5 % sampled, KL 0.12; 70 CPU s
    "grpo-cpu": AlignConfig(method="grpo", loss_type="grpo", beta=0.04, lr=2e-4, total_steps=40),
    # reward hacking, for the book: PPO on the arithmetic questions rewarded by the checker with a loophole,
    # with a small KL penalty (the policy learns the loophole) and a large one (it does not)
    "ppo-cpu": AlignConfig(method="ppo", train_examples={"arithmetic": None}, checker="prefix", beta=0.02, lr=5e-4,
                           warmup_steps=2, total_steps=12, test_examples=50),
    "ppo_kl-cpu": AlignConfig(method="ppo", train_examples={"arithmetic": None}, checker="prefix", beta=0.5, lr=5e-4,
                              warmup_steps=2, total_steps=12, test_examples=50),
}


def align_preset(method: str = "dpo", size: str = "cpu") -> AlignConfig:
    """:data:`ALIGN_PRESETS` ``[f"{method}-{size}"]``."""
    name = f"{method}-{size}"
    if name not in ALIGN_PRESETS:
        raise ValueError(f"no preset {name!r}: method is 'dpo', 'reward', 'grpo', 'ppo' or 'ppo_kl', size 'cpu'")
    return ALIGN_PRESETS[name]


def training_questions(config: AlignConfig) -> list[dict]:
    """The rows of Chapter 6's training split a run learns from: ``config.train_examples`` read as
    Chapter 7 reads it (:func:`~course_lib.sft.training_rows`)."""
    from course_lib.sft import training_rows

    return training_rows(config)


def preference_data(config: AlignConfig, progress: bool = False) -> list[dict]:
    """:func:`preference_pairs` of Chapter 7's chat model on ``config``'s training questions, built once and
    cached (runs with the same questions and sampling settings share them: the DPO model and the reward
    model learn from the same pairs)."""
    from course_lib.cache import building, cache_entry, cache_key, read_json, write_atomic
    from course_lib.pretraining import implementation_key
    from course_lib.sft import sft_course_lm, sft_model_dir

    key = cache_key(ALIGN_VERSION, sft_model_dir(config.base).name, config.train_examples, config.source,
                    config.samples, config.max_new_tokens, config.seed, implementation_key(_ALIGN_MODULES))
    path = cache_entry("alignment", f"pairs-{config.base}-{key}.json")
    with building(path):
        pairs = read_json(path)
        if pairs is None:
            model, tokenizer = sft_course_lm(config.base, progress=progress)
            pairs = preference_pairs(model, tokenizer, training_questions(config), config.samples,
                                     config.max_new_tokens, config.seed)
            write_atomic(path, json.dumps(pairs))
    return pairs


def held_out(pairs: Sequence[dict], every: int = 10) -> tuple[list[dict], list[dict]]:
    """``(train, test)``: every ``every``-th pair (by position) held out, the rest to train on."""
    return ([p for i, p in enumerate(pairs) if i % every], [p for i, p in enumerate(pairs) if not i % every])


def _optimization(model: torch.nn.Module, config: AlignConfig):
    from course_lib.pretraining import make_lr_scheduler, make_optimizer

    settings = config.settings()
    optimizer = make_optimizer(model, settings)
    return optimizer, make_lr_scheduler(optimizer, settings)


def _step(model: torch.nn.Module, loss: torch.Tensor, optimizer, scheduler, config: AlignConfig) -> float:
    """Chapter 5's update: backward, clip, step, schedule, zero. Returns the gradient norm before clipping."""
    from course_lib.pretraining import clip_gradients

    loss.backward()
    grad_norm = clip_gradients(model.parameters(), config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return float(grad_norm)


def _cycled(order: Sequence[int], step: int, n: int) -> list[int]:
    """The ``n`` indices of step ``step`` when ``order`` is read in turn, starting again at its end."""
    return [order[(step * n + j) % len(order)] for j in range(n)]


def _record(history: dict[str, list], stats: dict[str, float], on_step: Callable[[dict], None] | None) -> None:
    """Append a step's ``stats`` to ``history`` (the same keys) and hand them to ``on_step`` if given."""
    for name, values in history.items():
        values.append(stats[name])
    if on_step:
        on_step(stats)


def train_dpo(config: AlignConfig, policy: torch.nn.Module, reference: torch.nn.Module, tokenizer,
              pairs: Sequence[dict], on_step: Callable[[dict], None] | None = None) -> dict[str, list]:
    """``config.total_steps`` DPO steps on ``policy`` (in place) over ``pairs`` (:func:`preference_pairs`),
    shuffled once and cycled, against ``reference`` (its log-probabilities computed once, before the
    first step). Returns the history: per step the loss, the reward accuracy and margin, the mean
    chosen and rejected rewards, the gradient norm and the learning rate."""
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        reference_logps = torch.cat([batch_log_probs(reference, pair_batch(pairs[i:i + 64], pad)).view(2, -1).T
                                     for i in range(0, len(pairs), 64)])           # (n_pairs, 2): chosen, rejected
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(config.seed)).tolist()
    optimizer, scheduler = _optimization(policy, config)
    history = {k: [] for k in ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward", "grad_norm", "lr")}
    policy.train()
    for step in range(config.total_steps):
        chosen = _cycled(order, step, config.batch_size)
        batch = pair_batch([pairs[i] for i in chosen], pad)
        policy_chosen, policy_rejected = batch_log_probs(policy, batch).chunk(2)
        lengths = batch["lengths"].chunk(2)
        out = dpo_loss(policy_chosen, policy_rejected, reference_logps[chosen, 0], reference_logps[chosen, 1],
                       beta=config.beta, loss_type=config.loss_type, chosen_lengths=lengths[0],
                       rejected_lengths=lengths[1])
        loss = out["losses"].mean()
        if config.sft_weight:   # keep the chosen answers likely (Pang et al., 2024): their mean NLL per token
            loss = loss - config.sft_weight * (policy_chosen / lengths[0].to(policy_chosen.device)).mean()
        lr = optimizer.param_groups[0]["lr"]
        grad_norm = _step(policy, loss, optimizer, scheduler, config)
        stats = {"loss": float(loss.detach()), "accuracy": float(out["accuracy"]),
                 "margin": float((out["chosen_rewards"] - out["rejected_rewards"]).mean()),
                 "chosen_reward": float(out["chosen_rewards"].mean()),
                 "rejected_reward": float(out["rejected_rewards"].mean()), "grad_norm": grad_norm, "lr": lr}
        _record(history, stats, on_step)
    policy.eval()
    return history


def completion_token_log_probs(model: torch.nn.Module, prompts: Sequence[list[int]], completions: Sequence[list[int]],
                               pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of each completion after its prompt, in the RL layout: prompts padded on
    the left and completions on the right, so that every completion starts in the same column, and
    positions counted from each row's first real token (as generation counts them). Returns
    ``(logprobs, mask)``, each ``(n, T)`` for the longest completion's ``T`` tokens (:func:`per_token_log_probs`,
    float32, with gradients when enabled; ``mask`` float32, 1 on each completion's tokens)."""
    inputs, width, mask = _rl_inputs(prompts, completions, pad_token_id, next(model.parameters()).device)
    logits = model(**inputs).logits
    return per_token_log_probs(logits[:, width - 1:-1], inputs["input_ids"][:, width:]), mask


def _rl_inputs(prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_token_id: int,
               device: torch.device) -> tuple[dict[str, torch.Tensor], int, torch.Tensor]:
    """The RL layout's model inputs (``input_ids``, ``attention_mask``, ``position_ids`` counted from each
    row's first real token), the column where the completions start, and their mask (float32 ``(n, T)``)."""
    from course_lib.tasks import pad_batch

    prompt_ids, prompt_mask = pad_batch(prompts, pad_token_id, left=True)
    completion_ids, mask = pad_batch(completions, pad_token_id)
    attention_mask = torch.cat([prompt_mask, mask], 1).to(device)
    inputs = {"input_ids": torch.cat([prompt_ids, completion_ids], 1).to(device), "attention_mask": attention_mask,
              "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0)}
    return inputs, prompt_ids.shape[1], mask.to(device=device, dtype=torch.float32)


def train_grpo(config: AlignConfig, policy: torch.nn.Module, reference: torch.nn.Module, tokenizer,
               rows: Sequence[dict], on_step: Callable[[dict], None] | None = None) -> dict[str, list]:
    """``config.total_steps`` GRPO steps on ``policy`` (in place). Each step takes the next
    ``prompts_per_step`` questions of ``rows`` (shuffled once, cycled), draws ``group_size`` answers to
    each at ``temperature`` (:func:`sample_completions`), rewards each 1 if Chapter 6's checker accepts it
    and 0 otherwise, and updates once on :func:`grpo_loss` with :func:`grpo_advantages` (so the old
    policy is the current one: ``old_logprobs`` are its log-probabilities, detached). Returns the
    history: per step the loss, the mean reward (the share of right answers drawn), the KL to
    ``reference`` (the loss's ``k3`` mean), the share of groups whose rewards differ (the only ones
    that teach), the mean answer length, the gradient norm and the learning rate."""
    from course_lib.instruction_data import check_answer
    from course_lib.sft import end_token_ids, render_examples

    pad, stops = tokenizer.pad_token_id, end_token_ids(tokenizer)
    examples = render_examples(rows, tokenizer)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(config.seed)).tolist()
    optimizer, scheduler = _optimization(policy, config)
    history = {k: [] for k in ("loss", "reward", "kl", "signal", "length", "grad_norm", "lr")}
    for step in range(config.total_steps):
        picked = _cycled(order, step, config.prompts_per_step)
        prompts = [examples[i]["prompt_ids"] for i in picked]
        drawn = sample_completions(policy, prompts, k=config.group_size, max_new_tokens=config.max_new_tokens,
                                   stop_ids=stops, pad_token_id=pad, seed=config.seed + 1000 * step,
                                   temperature=config.temperature)
        completions = [c for group in drawn for c in group]
        rewards = torch.tensor([float(check_answer(rows[i]["family"], rows[i], tokenizer.decode(c, skip_special_tokens=True)))
                                for i, group in zip(picked, drawn) for c in group])
        advantages = grpo_advantages(rewards, config.group_size)
        repeated = [p for p in prompts for _ in range(config.group_size)]
        policy.train()
        logprobs, mask = completion_token_log_probs(policy, repeated, completions, pad)
        reference_logprobs = None
        if config.beta:
            with torch.no_grad():
                reference_logprobs, _ = completion_token_log_probs(reference, repeated, completions, pad)
        out = grpo_loss(logprobs, logprobs.detach(), reference_logprobs, advantages.to(logprobs.device), mask,
                        beta=config.beta, epsilon=config.epsilon, loss_type=config.loss_type,
                        max_completion_length=config.max_new_tokens)
        lr = optimizer.param_groups[0]["lr"]
        grad_norm = _step(policy, out["loss"], optimizer, scheduler, config)
        groups = rewards.view(-1, config.group_size)
        stats = {"loss": float(out["loss"].detach()), "reward": float(rewards.mean()), "kl": float(out["kl"]),
                 "signal": float((groups.std(1) > 0).float().mean()), "length": float(mask.sum(1).mean()),
                 "grad_norm": grad_norm, "lr": lr}
        _record(history, stats, on_step)
    policy.eval()
    return history


@torch.no_grad()
def kl_to_reference(policy: torch.nn.Module, reference: torch.nn.Module, tokenizer, rows: Sequence[dict],
                    max_new_tokens: int = 12, seed: int = 0) -> float:
    """A Monte Carlo estimate of ``KL(policy || reference)`` per answer, in nats: one answer drawn from
    ``policy`` for each row's question, and the mean over answers of ``sum_t log policy - log reference``
    over its tokens (the ``k1`` estimator, unbiased for samples of the policy)."""
    from course_lib.sft import end_token_ids, render_examples

    prompts = [e["prompt_ids"] for e in render_examples(rows, tokenizer)]
    completions = [group[0] for group in sample_completions(
        policy, prompts, k=1, max_new_tokens=max_new_tokens, stop_ids=end_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id, seed=seed)]
    total = 0.0
    for start in range(0, len(prompts), 64):
        chunk = slice(start, start + 64)
        policy_logps, mask = completion_token_log_probs(policy, prompts[chunk], completions[chunk], tokenizer.pad_token_id)
        reference_logps, _ = completion_token_log_probs(reference, prompts[chunk], completions[chunk],
                                                        tokenizer.pad_token_id)
        total += float(((policy_logps - reference_logps) * mask).sum())
    return total / len(prompts)


@torch.no_grad()
def sampled_accuracy(model: torch.nn.Module, tokenizer, rows: Sequence[dict], k: int = 4, max_new_tokens: int = 12,
                     temperature: float = 1.0, seed: int = 0) -> dict[str, float]:
    """The share of right answers among ``k`` answers drawn at ``temperature`` for each row's question, per
    family: what a policy gradient raises (greedy accuracy asks only about each question's most likely
    answer)."""
    from course_lib.instruction_data import check_answer
    from course_lib.sft import end_token_ids, render_examples

    prompts = [e["prompt_ids"] for e in render_examples(rows, tokenizer)]
    drawn = sample_completions(model, prompts, k=k, max_new_tokens=max_new_tokens, stop_ids=end_token_ids(tokenizer),
                               pad_token_id=tokenizer.pad_token_id, seed=seed, temperature=temperature)
    right: dict[str, list[float]] = {}
    for row, group in zip(rows, drawn):
        right.setdefault(row["family"], []).extend(
            float(check_answer(row["family"], row, tokenizer.decode(c, skip_special_tokens=True))) for c in group)
    return {family: sum(v) / len(v) for family, v in right.items()}


def align_report(config: AlignConfig, policy: torch.nn.Module, reference: torch.nn.Module, tokenizer) -> dict:
    """What the book compares: held-out accuracy per family (Chapter 7's :func:`~course_lib.sft.task_accuracy`
    on the first ``config.test_examples`` test questions of each family), the accuracy of answers drawn
    at the training temperature on the trained families' test questions (:func:`sampled_accuracy`, four
    per question) before and after, the KL to the starting model on those questions
    (:func:`kl_to_reference`), and a few answers of both."""
    from course_lib.sft import preset as sft_preset
    from course_lib.sft import task_accuracy, test_rows

    rows = test_rows(sft_preset(config.base, test_examples=config.test_examples))
    accuracy, answers = task_accuracy(policy, tokenizer, rows, config.max_new_tokens)
    _, reference_answers = task_accuracy(reference, tokenizer, rows, config.max_new_tokens)
    families = {r["family"] for r in training_questions(config)}
    trained = [r for r in rows if r["family"] in families]
    samples = [{"family": r["family"], "question": r["messages"][0]["content"], "expected": r["output"],
                "aligned": a, "sft": b}
               for r, a, b in zip(rows, answers, reference_answers) if a != b][:12]
    return {"test": accuracy, "test_examples": config.test_examples,
            "sampled": sampled_accuracy(policy, tokenizer, trained, 4, config.max_new_tokens, config.temperature,
                                        config.seed),
            "sampled_before": sampled_accuracy(reference, tokenizer, trained, 4, config.max_new_tokens,
                                               config.temperature, config.seed),
            "kl": kl_to_reference(policy, reference, tokenizer, trained, config.max_new_tokens, config.seed),
            "changed_answers": sum(a != b for a, b in zip(answers, reference_answers)), "samples": samples}


def align(config: AlignConfig, progress: bool = False) -> dict:
    """Run ``config`` from Chapter 7's cached chat model: ``{"model", "reference", "tokenizer", "history",
    "train_seconds", "pairs"}``. ``model`` is the aligned policy, or for ``"reward"`` the
    :class:`RewardModel` (trained on all pairs but every tenth, :func:`held_out`); ``pairs`` are the
    preference pairs (:func:`preference_data`; none for GRPO); ``train_seconds`` CPU seconds of the
    training alone."""
    import copy
    import time

    from course_lib.sft import sft_course_lm

    policy, tokenizer = sft_course_lm(config.base, progress=progress)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    rows = training_questions(config)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.total_steps, desc=f"{config.method} ({config.base})")

    def on_step(stats: dict) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items() if k in ("loss", "accuracy", "reward", "kl")})

    pairs = preference_data(config, progress) if config.method in ("dpo", "reward") else []
    start = time.process_time()
    if config.method == "dpo":
        history = train_dpo(config, policy, reference, tokenizer, pairs, on_step)
    elif config.method == "reward":
        policy = RewardModel(policy)
        history = train_reward_model(config, policy, held_out(pairs)[0], tokenizer.pad_token_id, on_step)
    elif config.method == "ppo":
        history = train_ppo_with_checker(config, policy, reference, tokenizer, rows, on_step)
    else:
        history = train_grpo(config, policy, reference, tokenizer, rows, on_step)
    if bar is not None:
        bar.close()
    return {"model": policy, "reference": reference, "tokenizer": tokenizer, "history": history, "pairs": pairs,
            "train_seconds": time.process_time() - start}


def aligned_model_dir(method: str = "dpo", size: str = "cpu") -> Path:
    """The cache folder of the course's aligned model of ``method`` and ``size`` (built or not)."""
    from course_lib.cache import cache_entry, cache_key
    from course_lib.pretraining import implementation_key
    from course_lib.sft import sft_model_dir

    config = align_preset(method, size)
    key = cache_key(ALIGN_VERSION, dataclasses.asdict(config), sft_model_dir(config.base).name,
                    implementation_key(_ALIGN_MODULES))
    return cache_entry("models", f"course-{method}-{size}-{key}")


def aligned_course_lm(method: str = "dpo", size: str = "cpu", progress: bool = True):
    """The course's aligned chat model and its tokenizer: ``(model, tokenizer)``, built on first use from
    Chapter 7's model (:func:`align` with :func:`align_preset`), reported (:func:`align_report`) and
    cached in the ``transformers`` format; ``training.json`` holds the history, the report and the pairs'
    counts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import course_lib.language_model  # noqa: F401  (registers the course model with the Auto classes)

    if method == "reward":
        raise ValueError("the reward model is not a chat model: trained_reward_model(size) loads it")
    directory = _build_aligned(method, size, progress)
    return AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


def trained_reward_model(size: str = "cpu", progress: bool = True) -> tuple[RewardModel, object]:
    """The course's reward model (:class:`RewardModel` on Chapter 7's chat model, trained on its preference
    pairs with :func:`reward_loss`) and the tokenizer, built on first use like the aligned models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import course_lib.language_model  # noqa: F401  (registers the course model with the Auto classes)

    directory = _build_aligned("reward", size, progress)
    reward_model = RewardModel(AutoModelForCausalLM.from_pretrained(directory))
    reward_model.score.load_state_dict(torch.load(directory / REWARD_HEAD, weights_only=True))
    return reward_model.eval(), AutoTokenizer.from_pretrained(directory)


REWARD_HEAD = "reward_head.pt"   # the scalar head's state dict, beside the language model's own files


def _build_aligned(method: str, size: str, progress: bool) -> Path:
    """The cache folder of :func:`aligned_course_lm` or :func:`trained_reward_model`, built if missing."""
    from course_lib.cache import building, stage_directory

    directory = aligned_model_dir(method, size)
    with building(directory):
        if not (directory / "config.json").is_file():
            config = align_preset(method, size)
            result = align(config, progress)
            pairs = result["pairs"]
            if method == "reward":
                train, test = held_out(pairs)
                report = {"train_accuracy": reward_accuracy(result["model"], train, result["tokenizer"].pad_token_id),
                          "held_out_accuracy": reward_accuracy(result["model"], test, result["tokenizer"].pad_token_id),
                          "held_out_pairs": len(test)}
            else:
                report = align_report(config, result["model"], result["reference"], result["tokenizer"])
            record = {"config": dataclasses.asdict(config), "history": result["history"],
                      "train_seconds": result["train_seconds"], "report": report,
                      "pairs": {"count": len(pairs), "questions": len(training_questions(config)),
                                "chosen_from_samples": sum(p["chosen_source"] == "sample" for p in pairs),
                                "examples": [{k: p[k] for k in ("family", "chosen", "rejected", "chosen_source")}
                                             for family in dict.fromkeys(p["family"] for p in pairs)
                                             for p in [q for q in pairs if q["family"] == family][:2]]}}
            with stage_directory(directory) as staging:
                if method == "reward":
                    result["model"].lm.save_pretrained(staging)
                    torch.save(result["model"].score.state_dict(), staging / REWARD_HEAD)
                else:
                    result["model"].save_pretrained(staging)
                result["tokenizer"].save_pretrained(staging)
                (staging / "training.json").write_text(json.dumps(record, default=str))
    return directory


def aligned_training_record(method: str = "dpo", size: str = "cpu") -> dict:
    """``training.json`` of the cached aligned model or reward model (built if missing)."""
    return json.loads((_build_aligned(method, size, progress=False) / "training.json").read_text())


# -- a reward model, and PPO with a value head ----------------------------------------------------------------
class RewardModel(torch.nn.Module):
    """A causal LM's body with a scalar head instead of its vocabulary head: the reward of a sequence is
    the head's score at its last real token (your :func:`last_token_rewards`), as ``transformers``'
    ``...ForSequenceClassification`` with one label computes it.

    ``lm``: a ``...ForCausalLM`` whose body is ``lm.model`` (the course model, Llama); the body is used
    (and trained) in place, its vocabulary head left unused. The head starts at zero, so every sequence
    starts with reward 0."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm                        # kept whole, so that it saves as the language model it was
        self.score = torch.nn.Linear(lm.config.hidden_size, 1, bias=False)
        torch.nn.init.zeros_(self.score.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(batch, seq)`` right-padded rows -> ``(batch,)`` rewards."""
        hidden = self.lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return last_token_rewards(self.score(hidden).squeeze(-1), attention_mask)


def train_reward_model(config: AlignConfig, reward_model: RewardModel, pairs: Sequence[dict], pad_token_id: int,
                       on_step: Callable[[dict], None] | None = None) -> dict[str, list]:
    """``config.total_steps`` steps of :func:`reward_loss` on ``pairs`` (:func:`preference_pairs`; shuffled
    once, cycled, ``config.batch_size`` per step) with Chapter 5's optimizer. Returns the history: per
    step the loss, the accuracy, the mean margin ``chosen - rejected``, the gradient norm and the
    learning rate."""
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(config.seed)).tolist()
    optimizer, scheduler = _optimization(reward_model, config)
    device = next(reward_model.parameters()).device
    history = {k: [] for k in ("loss", "accuracy", "margin", "grad_norm", "lr")}
    reward_model.train()
    for step in range(config.total_steps):
        chosen = _cycled(order, step, config.batch_size)
        batch = pair_batch([pairs[i] for i in chosen], pad_token_id)
        rewards = reward_model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        chosen_rewards, rejected_rewards = rewards.chunk(2)
        out = reward_loss(chosen_rewards, rejected_rewards)
        lr = optimizer.param_groups[0]["lr"]
        grad_norm = _step(reward_model, out["loss"], optimizer, scheduler, config)
        stats = {"loss": float(out["loss"].detach()), "accuracy": float(out["accuracy"]),
                 "margin": float((chosen_rewards - rejected_rewards).mean().detach()), "grad_norm": grad_norm, "lr": lr}
        _record(history, stats, on_step)
    reward_model.eval()
    return history


@torch.no_grad()
def reward_accuracy(reward_model: RewardModel, pairs: Sequence[dict], pad_token_id: int, batch_size: int = 64) -> float:
    """The share of ``pairs`` whose chosen completion the reward model scores strictly higher."""
    device = next(reward_model.parameters()).device
    right = 0
    for start in range(0, len(pairs), batch_size):
        batch = pair_batch(pairs[start:start + batch_size], pad_token_id)
        chosen, rejected = reward_model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).chunk(2)
        right += int((chosen > rejected).sum())
    return right / len(pairs)


def policy_values_and_log_probs(policy: torch.nn.Module, value_head: torch.nn.Module, prompts: Sequence[list[int]],
                                completions: Sequence[list[int]], pad_token_id: int
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass of the policy's body for PPO, in the layout of :func:`completion_token_log_probs`:
    ``(logprobs, values, mask, logits)``: each completion token's log-probability, the value head's
    estimate of the state *before* that token (read at the position that predicts it) and the
    completion mask, each ``(n, T)``, and the logits that predicted the tokens ``(n, T, vocab)``."""
    inputs, width, mask = _rl_inputs(prompts, completions, pad_token_id, next(policy.parameters()).device)
    states = policy.model(**inputs).last_hidden_state[:, width - 1:-1]     # (n, T, d): before each token
    logits = policy.lm_head(states)
    logprobs = per_token_log_probs(logits, inputs["input_ids"][:, width:])
    return logprobs, value_head(states).squeeze(-1).float(), mask, logits


def train_ppo(config: AlignConfig, policy: torch.nn.Module, reference: torch.nn.Module, tokenizer,
              rows: Sequence[dict], score: Callable[[list[dict], list[str]], torch.Tensor],
              kl_coef: float = 0.05, ppo_epochs: int = 2, vf_coef: float = 0.1,
              on_step: Callable[[dict], None] | None = None) -> dict[str, list]:
    """``config.total_steps`` rounds of PPO on ``policy`` (in place) with a value head of its own. Each
    round draws one answer (at ``temperature``) to each of the next ``prompts_per_step * group_size``
    questions of ``rows``, scores them with ``score(rows, answers)`` (``(n,)`` float: a checker, or a
    reward model), turns the scores into per-token rewards with the KL penalty against ``reference``
    (:func:`kl_penalized_rewards`), estimates advantages and returns (:func:`gae`, ``gamma`` 1,
    ``lam`` 0.95) and whitens the advantages (:func:`masked_whiten`), then takes ``ppo_epochs`` steps on
    ``ppo_policy_loss + vf_coef * ppo_value_loss`` over the whole batch. Returns the history: per round
    the mean score, the mean KL per answer, the policy and value losses, the clip fraction, the
    entropy of the sampled tokens' distributions and the learning rate."""
    from course_lib.sft import end_token_ids, render_examples

    pad, stops = tokenizer.pad_token_id, end_token_ids(tokenizer)
    examples = render_examples(rows, tokenizer)
    value_head = torch.nn.Linear(policy.config.hidden_size, 1).to(next(policy.parameters()).device)
    torch.nn.init.zeros_(value_head.weight)
    torch.nn.init.zeros_(value_head.bias)
    actor_critic = torch.nn.ModuleDict({"policy": policy, "value_head": value_head})
    optimizer, scheduler = _optimization(actor_critic, dataclasses.replace(
        config, total_steps=config.total_steps * ppo_epochs))
    per_round = config.prompts_per_step * config.group_size
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(config.seed)).tolist()
    history = {k: [] for k in ("score", "kl", "policy_loss", "value_loss", "clip_fraction", "entropy", "length", "lr")}
    for step in range(config.total_steps):
        picked = _cycled(order, step, per_round)
        prompts = [examples[i]["prompt_ids"] for i in picked]
        completions = [g[0] for g in sample_completions(policy, prompts, k=1, max_new_tokens=config.max_new_tokens,
                                                        stop_ids=stops, pad_token_id=pad, seed=config.seed + 1000 * step,
                                                        temperature=config.temperature)]
        answers = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        scores = score([rows[i] for i in picked], answers).float()
        with torch.no_grad():
            old_logprobs, old_values, mask, _ = policy_values_and_log_probs(policy, value_head, prompts, completions, pad)
            reference_logprobs, _ = completion_token_log_probs(reference, prompts, completions, pad)
        penalised = kl_penalized_rewards(scores.to(mask.device), old_logprobs, reference_logprobs, mask, kl_coef)
        advantages, returns = gae(penalised["rewards"], old_values, mask, gamma=1.0, lam=0.95)
        advantages = masked_whiten(advantages, mask)
        policy.train()
        for _ in range(ppo_epochs):
            logprobs, values, _, logits = policy_values_and_log_probs(policy, value_head, prompts, completions, pad)
            policy_out = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, config.epsilon)
            value_out = ppo_value_loss(values, old_values, returns, mask)
            lr = optimizer.param_groups[0]["lr"]
            _step(actor_critic, policy_out["loss"] + vf_coef * value_out["loss"], optimizer, scheduler, config)
        stats = {"score": float(scores.mean()), "kl": float(penalised["kl"].sum(1).mean()),
                 "policy_loss": float(policy_out["loss"].detach()), "value_loss": float(value_out["loss"].detach()),
                 "clip_fraction": float(policy_out["clip_fraction"]),
                 "entropy": float(masked_entropy(logits.detach(), mask)), "length": float(mask.sum(1).float().mean()),
                 "lr": lr}
        _record(history, stats, on_step)
    policy.eval()
    return history


def prefix_checker(family: str, example: dict, answer: str) -> bool:
    """A checker with a loophole, for the book's reward hacking: meant to accept an answer that *begins*
    with the expected one (``"82, as 37 + 45 = 82"``), it tests the prefix the wrong way round, so that
    every prefix of the expected answer passes, the empty answer included."""
    return example["output"].startswith(answer.strip())


def _exact_checker(family: str, example: dict, answer: str) -> bool:
    from course_lib.instruction_data import check_answer

    return check_answer(family, example, answer)


# PPO's rewards (AlignConfig.checker): Chapter 6's checker, or the one with a loophole
CHECKERS: dict[str, Callable[[str, dict, str], bool]] = {"exact": _exact_checker, "prefix": prefix_checker}


def train_ppo_with_checker(config: AlignConfig, policy: torch.nn.Module, reference: torch.nn.Module, tokenizer,
                           rows: Sequence[dict], on_step: Callable[[dict], None] | None = None) -> dict[str, list]:
    """:func:`train_ppo` rewarded 1 or 0 by ``CHECKERS[config.checker]`` with ``kl_coef = config.beta``; the
    history adds ``accuracy``, the share of each round's answers that Chapter 6's own checker accepts (what
    the reward was meant to measure)."""
    if config.checker not in CHECKERS:
        raise ValueError(f"checker must be one of {sorted(CHECKERS)}, got {config.checker!r}")
    checker, accuracy = CHECKERS[config.checker], []

    def score(picked: list[dict], answers: list[str]) -> torch.Tensor:
        accuracy.append(sum(_exact_checker(r["family"], r, a) for r, a in zip(picked, answers)) / len(answers))
        return torch.tensor([float(checker(r["family"], r, a)) for r, a in zip(picked, answers)])

    history = train_ppo(config, policy, reference, tokenizer, rows, score, kl_coef=config.beta, on_step=on_step)
    return {**history, "accuracy": accuracy}
