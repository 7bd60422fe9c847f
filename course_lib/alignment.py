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

import inspect
from typing import Callable, Sequence

import torch

from course_lib.checks import check_tensor
from course_lib.exercises import exercise

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
GRPO_SCALES = ("group", "batch", "none")
WHITEN_EPS = 1e-8          # added to the variance before its square root (masked_whiten)
GRPO_STD_EPS = 1e-4        # added to the standard deviation of a group's rewards (grpo_advantages)


# -- validation: bad input is refused before an exercise runs, with the argument's name ----------------
def _check_number(name: str, value, minimum: float | None = None, maximum: float | None = None,
                  open_minimum: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if minimum is not None and (value < minimum or (open_minimum and value == minimum)):
        raise ValueError(f"{name} must be {'>' if open_minimum else '>='} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return float(value)


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
    _check_number("temperature", temperature, 0.0, open_minimum=True)


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
    if not isinstance(average, bool):
        raise TypeError(f"average must be a bool, got {average!r}")


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
    _check_number("beta", beta, 0.0, open_minimum=True)
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    _check_number("label_smoothing", label_smoothing, 0.0, 0.5)
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
    if not isinstance(shift_mean, bool):
        raise TypeError(f"shift_mean must be a bool, got {shift_mean!r}")


def _validate_gae(rewards, values, mask, gamma=1.0, lam=0.95) -> None:
    _check_batch_tokens(("rewards", "values"), (rewards, values), "mask", mask)
    _check_number("gamma", gamma, 0.0, 1.0)
    _check_number("lam", lam, 0.0, 1.0)


def _validate_kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.05) -> None:
    _check_batch_tokens(("logprobs", "ref_logprobs"), (logprobs, ref_logprobs), "mask", mask)
    check_tensor("scores", scores, floating=True)
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(f"scores must be (batch,) = {tuple(logprobs.shape[:1])}, got {tuple(scores.shape)}")
    if not mask.bool().any(dim=1).all():
        raise ValueError("every row of mask needs at least one token (the one that gets the score)")
    _check_number("kl_coef", kl_coef, 0.0)


def _validate_ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2) -> None:
    _check_batch_tokens(("logprobs", "old_logprobs", "advantages"), (logprobs, old_logprobs, advantages), "mask",
                        mask)
    _check_number("clip_range", clip_range, 0.0, 1.0, open_minimum=True)


def _validate_ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.2) -> None:
    _check_batch_tokens(("values", "old_values", "returns"), (values, old_values, returns), "mask", mask)
    _check_number("clip_range_value", clip_range_value, 0.0, open_minimum=True)


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
    _check_number("beta", beta, 0.0)
    if beta and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (the KL term is measured against the reference)")
    _check_number("epsilon", epsilon, 0.0, 1.0, open_minimum=True)
    if epsilon_high is not None:
        _check_number("epsilon_high", epsilon_high, 0.0, open_minimum=True)
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {GRPO_LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "dr_grpo":
        if isinstance(max_completion_length, bool) or not isinstance(max_completion_length, int):
            raise ValueError("the 'dr_grpo' loss needs max_completion_length, an int")
        if max_completion_length < logprobs.shape[1]:
            raise ValueError(f"max_completion_length ({max_completion_length}) must be at least T = {logprobs.shape[1]}")
    if not isinstance(importance_weighted_kl, bool):
        raise TypeError(f"importance_weighted_kl must be a bool, got {importance_weighted_kl!r}")


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
