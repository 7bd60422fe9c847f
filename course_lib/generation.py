"""Chapter 4: text generation, from greedy decoding to beam search, sampling filters and the KV cache.

A causal language model gives, for every prefix, a distribution over the next token. *Decoding* turns
that into text one token at a time: pick a token (the most likely one, a sample, or the best of
several running hypotheses), append it, ask again. This chapter builds the loop the way Hugging Face's
``generate()`` runs it, and checks every piece against it on the same model:

- **greedy decoding** over a batch of prompts of different lengths (:func:`greedy_search`), first by
  recomputing the whole prefix every step, then with a **KV cache** (:func:`decode_step`,
  :func:`cached_greedy_search`): the prompt runs once (*prefill*), then each step feeds one token;
- the **logits processors** that reshape the next-token distribution before sampling: temperature,
  top-k (Fan et al., 2018), top-p / nucleus (Holtzman et al., 2020), min-p (Nguyen et al., 2024) and
  the repetition penalty (Keskar et al., 2019): :func:`top_k_filter`, :func:`top_p_filter`,
  :func:`min_p_filter`, :func:`apply_repetition_penalty`, composed in Hugging Face's order by
  :func:`process_logits`; **seeded sampling** (:func:`sample`);
- **beam search** with a length penalty and early stopping, returning the n best hypotheses with
  their scores (:func:`beam_search`);
- **stop sequences**, in tokens (:func:`stop_sequence_hit`) and in text (:func:`stop_string_hit`).

Conventions used by every exercise of this chapter:

- **The model** is any Hugging Face-style causal LM (``LlamaForCausalLM``, ``GPT2LMHeadModel``, the
  course's own LM from Chapter 3). Call it through :func:`model_step`, which runs one forward pass the
  way ``generate()`` does (``model(input_ids=, attention_mask=, position_ids=, cache=, use_cache=)``
  in inference mode) and returns the **last position's logits** as float32 ``(batch, vocab)`` and the
  cache. (In transformers 5 the cache argument is ``cache``; older code calls it ``past_key_values``.)
- **Batches of prompts are left-padded**: ``input_ids`` ``(batch, prompt_len)`` with padding first and
  ``attention_mask`` ``(batch, prompt_len)`` of 1 (token) / 0 (padding), as a tokenizer with
  ``padding_side="left"`` returns. New tokens are appended on the right, so every row's last column is
  its latest real token. ``attention_mask=None`` means no padding.
- **Position ids** count real tokens only: ``attention_mask.cumsum(-1) - 1``, with padding set to 0
  (Hugging Face's convention). A row padded with 3 zeros starts at position 0, not 3.
- **EOS and padding.** ``eos_token_id`` is ``None``, one id, or a list of ids. A row that has produced
  an EOS is *finished*: every later column of that row holds ``pad_token_id`` (which defaults to the
  first EOS id). Decoding stops early once every row is finished, so the output may be shorter than
  ``prompt_len + max_new_tokens``. Without an EOS, rows never finish.
- **Outputs** are ``(batch, prompt_len + generated)`` int64 tensors of the prompt followed by the new
  tokens, exactly what ``model.generate(...)`` returns for the same arguments.
- **Logits processors** take and return float logits ``(batch, vocab)``; a removed token gets
  ``-inf`` (``softmax`` then gives it probability 0). They never change the input in place.

References: Holtzman et al. 2020, *The Curious Case of Neural Text Degeneration* (nucleus sampling);
Fan et al. 2018, *Hierarchical Neural Story Generation* (top-k sampling); Keskar et al. 2019, *CTRL*
(repetition penalty); Nguyen et al. 2024, *Turning Up the Heat: Min-p Sampling*; Wu et al. 2016,
*Google's Neural Machine Translation System* (length penalty; Hugging Face divides by
``length ** length_penalty``); Shazeer 2019, *Fast Transformer Decoding* and Pope et al. 2022,
*Efficiently Scaling Transformer Inference* (the cost of decoding with a KV cache).
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import nn
from transformers import Cache, DynamicCache

from course_lib.checks import check_int, check_number, check_tensor
from course_lib.exercises import exercise


# -- running the model (implemented) ----------------------------------------------------------------
def _cache_argument(model: nn.Module) -> str:
    """The name of the forward argument that takes the KV cache (``cache`` in transformers 5)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def model_step(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               cache: Cache | None = None) -> tuple[torch.Tensor, Cache | None]:
    """One forward pass as ``generate()`` makes it; returns ``(logits, cache)``.

    Args:
        model: a causal LM.
        input_ids: ``(batch, new_len)``: the tokens to run (the whole sequence without a cache; with a
            cache, only the tokens it does not hold yet).
        attention_mask: ``(batch, past_len + new_len)``: the mask of *everything* the new tokens may
            attend to, cached tokens included.
        position_ids: ``(batch, new_len)``: the positions of the new tokens.
        cache: ``None`` to run without a cache, or a ``transformers.Cache`` (e.g. ``DynamicCache()``)
            that holds ``past_len`` tokens; the model appends the new tokens' keys and values to it.

    Returns:
        ``logits`` ``(batch, vocab)`` float32 of the *last* position, and the cache (``None`` without one).
    """
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=cache is not None)
    if cache is not None:
        kwargs[_cache_argument(model)] = cache
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1  # only the last position's logits, as generate() asks for
    with torch.inference_mode():
        outputs = model(**kwargs)
    new_cache = getattr(outputs, "cache", None) if cache is not None else None
    if cache is not None and new_cache is None:
        new_cache = outputs.past_key_values
    return outputs.logits[:, -1].float(), new_cache


def as_cache(past_key_values: Cache | Sequence[tuple[torch.Tensor, torch.Tensor]] | None) -> Cache:
    """A ``transformers.Cache`` for ``past_key_values``: an empty ``DynamicCache`` for ``None``, the
    cache itself, or a ``DynamicCache`` holding a list of per-layer ``(key, value)`` tensors
    ``(batch, kv_heads, past_len, d_head)``."""
    if past_key_values is None:
        return DynamicCache()
    if isinstance(past_key_values, Cache):
        return past_key_values
    return DynamicCache([(k, v) for k, v in past_key_values])


def cache_to_tuples(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The cache as a list of per-layer ``(key, value)`` tensors ``(batch, kv_heads, seq, d_head)``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def eos_and_pad(eos_token_id: int | Sequence[int] | None, pad_token_id: int | None) -> tuple[list[int], int | None]:
    """The EOS ids as a list (empty for ``None``) and the padding id (default: the first EOS id)."""
    eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return eos, pad_token_id if pad_token_id is not None or not eos else eos[0]


# -- argument checks (run before your code; they are not part of the exercises) ---------------------
def _vocab_size(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None) if config is not None else None


def _check_ids(name: str, input_ids, vocab_size: int | None) -> None:
    check_tensor(name, input_ids, integer=True)
    if input_ids.ndim != 2 or 0 in input_ids.shape:
        raise ValueError(f"{name} must be a non-empty (batch, seq) tensor of token ids, got shape {tuple(input_ids.shape)}")
    if bool((input_ids < 0).any()) or (vocab_size is not None and bool((input_ids >= vocab_size).any())):
        raise ValueError(f"{name} holds ids outside the vocabulary [0, {vocab_size})")


def _check_token_id(name: str, value, vocab_size: int | None, allow_list: bool) -> None:
    if value is None:
        return
    ids = value if allow_list and isinstance(value, (list, tuple)) else [value]
    if not ids:
        raise ValueError(f"{name} must not be an empty list")
    for i in ids:
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"{name} must be None, an int{' or a list of ints' if allow_list else ''}, got {value!r}")
        if i < 0 or (vocab_size is not None and i >= vocab_size):
            raise ValueError(f"{name}={i} is outside the vocabulary [0, {vocab_size})")


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a causal LM (a torch.nn.Module), got {type(model).__name__}")


def _check_padding_mask(attention_mask, shape: tuple[int, int], left_padded: bool = True) -> None:
    check_tensor("attention_mask", attention_mask)
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        raise TypeError(f"attention_mask must hold integers 1 (token) and 0 (padding), got {attention_mask.dtype}")
    if tuple(attention_mask.shape) != shape:
        raise ValueError(f"attention_mask must have shape {shape}, got {tuple(attention_mask.shape)}")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    if not bool(attention_mask.bool().any(dim=-1).all()):
        raise ValueError("attention_mask has a row with no token at all")
    if left_padded and bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
        raise ValueError("attention_mask is padded on the right: new tokens go after the last column, so pad "
                         "prompts on the left (tokenizer.padding_side = 'left')")


def _validate_decoding(model, input_ids, attention_mask=None, *, max_new_tokens, eos_token_id=None,
                       pad_token_id=None, **options) -> None:
    _check_model(model)
    vocab_size = _vocab_size(model)
    _check_ids("input_ids", input_ids, vocab_size)
    if attention_mask is not None:
        _check_padding_mask(attention_mask, tuple(input_ids.shape))
    check_int("max_new_tokens", max_new_tokens, 1)
    _check_token_id("eos_token_id", eos_token_id, vocab_size, allow_list=True)
    _check_token_id("pad_token_id", pad_token_id, vocab_size, allow_list=False)


def _validate_decode_step(model, input_ids, attention_mask, past_key_values=None) -> None:
    _check_model(model)
    _check_ids("input_ids", input_ids, _vocab_size(model))
    if past_key_values is None:
        past_len = 0
    elif isinstance(past_key_values, Cache):
        past_len = past_key_values.get_seq_length()
    elif isinstance(past_key_values, (list, tuple)):
        past_len = None
        for i, layer in enumerate(past_key_values):
            if not isinstance(layer, (list, tuple)) or len(layer) != 2:
                raise TypeError(f"past_key_values[{i}] must be a (key, value) pair of tensors")
            for t in layer:
                check_tensor(f"past_key_values[{i}]", t, floating=True)
                if t.ndim != 4 or t.shape[0] != input_ids.shape[0]:
                    raise ValueError(f"past_key_values[{i}] tensors must be (batch={input_ids.shape[0]}, kv_heads, "
                                     f"past_len, d_head), got shape {tuple(t.shape)}")
            if past_len is not None and layer[0].shape[2] != past_len:
                raise ValueError(f"past_key_values[{i}] holds {layer[0].shape[2]} positions, layer 0 holds {past_len}")
            past_len = layer[0].shape[2]
        past_len = past_len or 0
    else:
        raise TypeError("past_key_values must be None, a transformers Cache or a list of (key, value) tensor pairs, "
                        f"got {type(past_key_values).__name__}")
    batch, new_len = input_ids.shape
    _check_padding_mask(attention_mask, (batch, past_len + new_len), left_padded=False)


def _check_logits(logits) -> None:
    check_tensor("logits", logits, floating=True)
    if logits.ndim != 2 or 0 in logits.shape:
        raise ValueError(f"logits must be a non-empty (batch, vocab) tensor, got shape {tuple(logits.shape)}")


def _validate_top_k(logits, top_k, min_tokens_to_keep=1) -> None:
    _check_logits(logits)
    check_int("top_k", top_k, 1)
    check_int("min_tokens_to_keep", min_tokens_to_keep, 1)


def _validate_top_p(logits, top_p, min_tokens_to_keep=1) -> None:
    _check_logits(logits)
    check_number("top_p", top_p, 0.0, 1.0)
    check_int("min_tokens_to_keep", min_tokens_to_keep, 1)


def _validate_min_p(logits, min_p, min_tokens_to_keep=1) -> None:
    _check_logits(logits)
    check_number("min_p", min_p, 0.0, 1.0)
    check_int("min_tokens_to_keep", min_tokens_to_keep, 1)


def _check_history(logits, input_ids, attention_mask) -> None:
    _check_ids("input_ids", input_ids, logits.shape[-1])
    if input_ids.shape[0] != logits.shape[0]:
        raise ValueError(f"input_ids has {input_ids.shape[0]} rows, logits has {logits.shape[0]}")
    if input_ids.device != logits.device:
        raise ValueError(f"input_ids ({input_ids.device}) and logits ({logits.device}) must be on one device")
    if attention_mask is not None:
        _check_padding_mask(attention_mask, tuple(input_ids.shape))


def _validate_repetition_penalty(logits, input_ids, penalty, attention_mask=None) -> None:
    _check_logits(logits)
    _check_history(logits, input_ids, attention_mask)
    check_number("penalty", penalty, 0.0, open_minimum=True)


def _check_processors(temperature, top_k, top_p, min_p, repetition_penalty) -> None:
    check_number("temperature", temperature, 0.0, open_minimum=True)
    check_int("top_k", top_k, minimum=0)
    check_number("top_p", top_p, 0.0, 1.0)
    if min_p is not None:
        check_number("min_p", min_p, 0.0, 1.0)
    check_number("repetition_penalty", repetition_penalty, 0.0, open_minimum=True)


def _validate_process_logits(logits, input_ids, attention_mask=None, *, temperature=1.0, top_k=0, top_p=1.0,
                             min_p=None, repetition_penalty=1.0) -> None:
    _check_logits(logits)
    _check_history(logits, input_ids, attention_mask)
    _check_processors(temperature, top_k, top_p, min_p, repetition_penalty)


def _validate_sample(model, input_ids, attention_mask=None, *, max_new_tokens, seed, temperature=1.0, top_k=0,
                     top_p=1.0, min_p=None, repetition_penalty=1.0, eos_token_id=None, pad_token_id=None) -> None:
    _validate_decoding(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                       pad_token_id=pad_token_id)
    check_int("seed", seed, minimum=0)
    _check_processors(temperature, top_k, top_p, min_p, repetition_penalty)


def _validate_beam_search(model, input_ids, attention_mask=None, *, num_beams, max_new_tokens, length_penalty=1.0,
                          early_stopping=False, num_return_sequences=1, eos_token_id=None, pad_token_id=None) -> None:
    _validate_decoding(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                       pad_token_id=pad_token_id)
    check_int("num_beams", num_beams, 1)
    check_number("length_penalty", length_penalty)
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    check_int("num_return_sequences", num_return_sequences, 1)
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences} must be <= num_beams={num_beams}")


def _validate_stop_sequence_hit(input_ids, stop_sequences) -> None:
    _check_ids("input_ids", input_ids, None)
    if not isinstance(stop_sequences, (list, tuple)):
        raise TypeError(f"stop_sequences must be a list of lists of token ids, got {type(stop_sequences).__name__}")
    for i, stop in enumerate(stop_sequences):
        if not isinstance(stop, (list, tuple)) or not stop \
                or not all(isinstance(t, int) and not isinstance(t, bool) for t in stop):
            raise TypeError(f"stop_sequences[{i}] must be a non-empty list of token ids, got {stop!r}")


def _validate_stop_string_hit(token_texts, stop_strings) -> None:
    if not isinstance(token_texts, (list, tuple)) or not all(isinstance(t, str) for t in token_texts):
        raise TypeError("token_texts must be a list of str (the text of each token)")
    if not isinstance(stop_strings, (list, tuple)) or not all(isinstance(s, str) and s for s in stop_strings):
        raise TypeError("stop_strings must be a list of non-empty str")


# -- 4.1 to 4.3: greedy decoding and the KV cache ----------------------------------------------------
@exercise("4.1", points=3, validate=_validate_decoding)
def greedy_search(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                  max_new_tokens: int, eos_token_id: int | list[int] | None = None,
                  pad_token_id: int | None = None) -> torch.Tensor:
    """Greedy decoding without a cache: every step runs the whole sequence so far and appends the
    most likely next token of each row.

    Args:
        model: a causal LM (see the module's conventions; call it through :func:`model_step` with
            ``cache=None``).
        input_ids: ``(batch, prompt_len)`` int64 prompts, left-padded.
        attention_mask: ``(batch, prompt_len)`` of 1 (token) / 0 (padding), or ``None`` (no padding).
        max_new_tokens: at most this many tokens are appended to each row.
        eos_token_id: ``None``, an id or a list of ids that finish a row.
        pad_token_id: what finished rows get from then on (default: the first EOS id).

    Returns:
        ``(batch, prompt_len + n)`` int64 with ``n <= max_new_tokens``: the prompts followed by the new
        tokens; ``n < max_new_tokens`` only if every row finished early. Equal to
        ``model.generate(input_ids, attention_mask=attention_mask, do_sample=False,
        max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id)``.

    Hint:
        Each step: positions from the mask (``attention_mask.cumsum(-1) - 1``, padding set to 0), one
        :func:`model_step`, ``argmax`` over the vocabulary *per row* (``dim=-1``; an argmax over the
        whole logits tensor gives one flat index for the batch), pad the rows that finished earlier,
        append the tokens to ``input_ids`` and a column of 1s to ``attention_mask``. A row is finished
        once its new token is an EOS; stop when all are.
    """
    raise NotImplementedError("Exercise 4.1: implement greedy_search in generation.py")


@exercise("4.2", points=2, validate=_validate_decode_step)
def decode_step(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                past_key_values: Cache | list[tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> tuple[torch.Tensor, Cache | list[tuple[torch.Tensor, torch.Tensor]]]:
    """One step of decoding with a KV cache: run only the tokens the cache does not hold yet.

    The first call (*prefill*) gets the whole prompt and no cache; every later call gets the one new
    token of each row and the cache of the previous call. The keys and values of earlier positions
    never change, so the cache holds them and each step costs one position instead of the whole
    prefix (Shazeer, 2019; Pope et al., 2022).

    Args:
        model: a causal LM.
        input_ids: ``(batch, new_len)``: the tokens not in the cache yet.
        attention_mask: ``(batch, past_len + new_len)``: 1/0 for *every* position, cached ones first.
        past_key_values: ``None`` (empty cache), a ``transformers.Cache`` holding ``past_len``
            positions, or the same as a list of per-layer ``(key, value)`` tensors
            ``(batch, kv_heads, past_len, d_head)`` (what crosses the grading door).

    Returns:
        ``(logits, past_key_values)``: the float32 logits ``(batch, vocab)`` of the last new position,
        equal to those of running the whole sequence without a cache; and the cache now holding
        ``past_len + new_len`` positions, of the kind given (a ``Cache`` for a ``Cache``, otherwise a
        list of ``(key, value)`` tensors).

    Hint:
        :func:`as_cache` turns what you get into a ``DynamicCache`` (``cache.get_seq_length()`` is
        ``past_len``), :func:`model_step` runs the model and appends to it, :func:`cache_to_tuples`
        turns it back. The new tokens' positions are the *last* ``new_len`` columns of the positions
        computed from the full mask: an ``arange(past_len, past_len + new_len)`` is wrong for
        left-padded rows, and a position one too high or low gives other logits.
    """
    raise NotImplementedError("Exercise 4.2: implement decode_step in generation.py")


@exercise("4.3", points=2, validate=_validate_decoding)
def cached_greedy_search(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                         max_new_tokens: int, eos_token_id: int | list[int] | None = None,
                         pad_token_id: int | None = None) -> torch.Tensor:
    """Greedy decoding with a KV cache: prefill the prompts once, then feed one token per step.

    Same arguments and result as :func:`greedy_search` (the same tokens), in ``O(length)`` model work
    per step instead of ``O(length^2)``.

    Hint:
        Start from ``DynamicCache()`` and keep passing the cache that :func:`decode_step` returns (a
        ``Cache`` stays a ``Cache``: no copies). The first call gets ``input_ids`` whole; later calls
        get ``next_tokens[:, None]``, with ``attention_mask`` grown by a column of 1s each step.
    """
    raise NotImplementedError("Exercise 4.3: implement cached_greedy_search in generation.py")


# -- 4.4 to 4.8: logits processors -------------------------------------------------------------------
@exercise("4.4", points=1, validate=_validate_top_k)
def top_k_filter(logits: torch.Tensor, top_k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Top-k filtering (Fan et al., 2018): keep the ``top_k`` highest logits of each row.

    Args:
        logits: ``(batch, vocab)`` float.
        top_k: how many tokens to keep (at least ``min_tokens_to_keep``; at most the vocabulary).
        min_tokens_to_keep: never keep fewer.

    Returns:
        ``logits`` with ``-inf`` wherever a logit is *strictly below* the k-th highest of its row (so a
        token tied with the k-th is kept too), same shape and dtype. Equal to Hugging Face's
        ``TopKLogitsWarper(top_k, min_tokens_to_keep=...)``.

    Hint:
        ``torch.topk(logits, k).values[..., -1:]`` is each row's k-th highest; compare with ``<``.
    """
    raise NotImplementedError("Exercise 4.4: implement top_k_filter in generation.py")


@exercise("4.5", points=2, validate=_validate_top_p)
def top_p_filter(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Top-p (nucleus) filtering (Holtzman et al., 2020): keep the smallest set of most probable
    tokens whose probabilities add up to at least ``top_p``.

    Args:
        logits: ``(batch, vocab)`` float.
        top_p: the probability mass to keep, in ``[0, 1]``; ``1.0`` keeps everything.
        min_tokens_to_keep: never keep fewer than this many (the most probable).

    Returns:
        ``logits`` with ``-inf`` at the removed tokens, same shape and dtype, equal to Hugging Face's
        ``TopPLogitsWarper(top_p, min_tokens_to_keep=...)``: sort the probabilities (softmax of the
        logits) in *ascending* order and take their cumulative sum; a token is removed if that sum up
        to and including it is ``<= 1 - top_p``. The token whose probability crosses the threshold is
        therefore **kept**: without it the kept mass would fall short of ``top_p``.

    Hint:
        ``torch.sort(logits, descending=False)``, ``softmax``, ``cumsum``, compare, force the last
        ``min_tokens_to_keep`` sorted entries to stay, then put the mask back in vocabulary order with
        ``scatter(-1, sorted_indices, mask)``.
    """
    raise NotImplementedError("Exercise 4.5: implement top_p_filter in generation.py")


@exercise("4.6", points=1, validate=_validate_min_p)
def min_p_filter(logits: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Min-p filtering (Nguyen et al., 2024): keep the tokens at least ``min_p`` times as probable as
    the most probable one.

    Args:
        logits: ``(batch, vocab)`` float.
        min_p: the threshold relative to the top probability, in ``[0, 1]``.
        min_tokens_to_keep: always keep this many of the most probable tokens.

    Returns:
        ``logits`` with ``-inf`` where ``p < min_p * max(p)`` (``p = softmax(logits)``) except for the
        ``min_tokens_to_keep`` most probable, equal to Hugging Face's ``MinPLogitsWarper``. Unlike
        top-p, the cut adapts to the model's confidence: a peaked distribution keeps few tokens.

    Hint:
        ``probs.amax(dim=-1, keepdim=True)``; ``torch.topk(probs, min_tokens_to_keep).indices`` are the
        ones to keep regardless.
    """
    raise NotImplementedError("Exercise 4.6: implement min_p_filter in generation.py")


@exercise("4.7", points=1, validate=_validate_repetition_penalty)
def apply_repetition_penalty(logits: torch.Tensor, input_ids: torch.Tensor, penalty: float,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The repetition penalty (Keskar et al., 2019): make every token already in the sequence less
    likely.

    Args:
        logits: ``(batch, vocab)`` float: the next-token logits.
        input_ids: ``(batch, seq)`` int64: the sequence so far, prompt included.
        penalty: ``> 1`` discourages repeats, ``< 1`` encourages them, ``1`` does nothing.
        attention_mask: ``None`` or ``(batch, seq)`` of 1/0: padding (0) is not an occurrence.

    Returns:
        ``logits`` where, for every token id that occurs in its row of ``input_ids`` outside the
        padding (once, however often it occurs), a positive logit is divided by ``penalty`` and a
        negative one multiplied by it; other tokens unchanged. Equal to Hugging Face's
        ``RepetitionPenaltyLogitsProcessor`` with ``prompt_ignore_length`` set to each row's padding
        length, which is what ``generate()`` uses for left-padded prompts.

    Hint:
        Mark the seen tokens in a ``(batch, vocab)`` bool tensor with ``scatter``; padding ids can be
        sent to an extra column ``vocab`` that you drop afterwards. Then ``torch.where(logits < 0,
        logits * penalty, logits / penalty)`` where seen. Dividing a *negative* logit by the penalty
        would make the token *more* likely.
    """
    raise NotImplementedError("Exercise 4.7: implement apply_repetition_penalty in generation.py")


@exercise("4.8", points=2, validate=_validate_process_logits)
def process_logits(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float | None = None,
                   repetition_penalty: float = 1.0) -> torch.Tensor:
    """The sampling distribution's logits: every processor that is switched on, in Hugging Face's
    order.

    Args:
        logits: ``(batch, vocab)`` float: the model's next-token logits.
        input_ids: ``(batch, seq)``: the sequence so far (for the repetition penalty).
        attention_mask: ``None`` or ``(batch, seq)`` of 1/0 (for the repetition penalty).
        temperature: divide the logits by it (``< 1`` sharpens, ``> 1`` flattens); ``1.0`` is off.
        top_k: :func:`top_k_filter`; ``0`` is off.
        top_p: :func:`top_p_filter`; ``1.0`` is off.
        min_p: :func:`min_p_filter`; ``None`` is off.
        repetition_penalty: :func:`apply_repetition_penalty`; ``1.0`` is off.

    Returns:
        The processed logits ``(batch, vocab)``, equal to the ``scores`` that
        ``model.generate(..., do_sample=True, output_scores=True, return_dict_in_generate=True)``
        reports for the same settings: repetition penalty, then temperature, then top-k, top-p and
        min-p (each filter with ``min_tokens_to_keep=1``).

    Hint:
        The order matters: top-p and min-p read probabilities, which the temperature changes, so the
        temperature comes first.
    """
    raise NotImplementedError("Exercise 4.8: implement process_logits in generation.py")


@exercise("4.9", points=2, validate=_validate_sample)
def sample(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
           max_new_tokens: int, seed: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           min_p: float | None = None, repetition_penalty: float = 1.0, eos_token_id: int | list[int] | None = None,
           pad_token_id: int | None = None) -> torch.Tensor:
    """Seeded sampling with a KV cache: each step draws the next token of every row from the
    processed distribution.

    Args:
        model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id: as for
            :func:`greedy_search`.
        seed: seeds a ``torch.Generator`` on ``input_ids``'s device; the same seed gives the same text.
        temperature, top_k, top_p, min_p, repetition_penalty: as for :func:`process_logits`.

    Returns:
        ``(batch, prompt_len + n)`` int64, as :func:`greedy_search`. On the CPU it equals
        ``torch.manual_seed(seed); model.generate(..., do_sample=True, top_k=top_k, ...)``: the same
        draws in the same order, so the same tokens.

    Hint:
        Per step: :func:`decode_step`, :func:`process_logits` with the sequence and mask so far, ``softmax``,
        then exactly one ``torch.multinomial(probs, num_samples=1, generator=generator)`` for the whole
        batch (one draw per row, in row order, as ``generate`` does). Any other use of the generator
        between draws shifts every later sample.
    """
    raise NotImplementedError("Exercise 4.9: implement sample in generation.py")


# -- 4.10: beam search -----------------------------------------------------------------------------------
@exercise("4.10", points=4, validate=_validate_beam_search)
def beam_search(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
                early_stopping: bool | str = False, num_return_sequences: int = 1,
                eos_token_id: int | list[int] | None = None,
                pad_token_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search with a length penalty and early stopping, as Hugging Face's ``generate()`` runs it.

    Per prompt, ``num_beams`` running hypotheses (*beams*) are scored by the sum of their tokens'
    log-probabilities. Each step extends every beam by every token and keeps the best
    ``2 * num_beams`` candidates (``(1 + number of EOS ids) * num_beams`` if larger):

    - a candidate that ends (its token is an EOS, or it reached ``max_new_tokens``) and is among the
      best ``num_beams`` candidates enters the prompt's pool of ``num_beams`` finished hypotheses
      with score ``sum_logprobs / generated_len ** length_penalty`` (``generated_len`` counts the new
      tokens, EOS included; Wu et al., 2016 as Hugging Face defines it), if it beats the pool's worst;
    - the best ``num_beams`` candidates that did not end are the next beams (with their caches).

    Before the first step only beam 0 counts (the others start at ``-1e9``), or all beams would pick
    the same token. A prompt stops taking finished hypotheses once its pool cannot change:
    ``early_stopping=True``: as soon as the pool holds ``num_beams``; ``False``: once the pool is full
    and the best running beam's score divided by ``current_len ** length_penalty`` cannot beat the
    pool's worst; ``"never"``: the same, but with ``max_new_tokens`` instead of ``current_len`` when
    ``length_penalty > 0`` (a longer beam could still win). Decoding stops when no prompt takes
    hypotheses any more, or at ``max_new_tokens``.

    Args:
        model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id: as for
            :func:`greedy_search`.
        num_beams: beams per prompt.
        length_penalty: exponent of the length normalisation (``0``: raw sums, which favour short
            hypotheses; ``> 0`` favours longer ones).
        early_stopping: ``True``, ``False`` or ``"never"`` (see above).
        num_return_sequences: how many of the best finished hypotheses to return per prompt
            (``<= num_beams``).

    Returns:
        ``(sequences, scores)``: ``sequences`` ``(batch * num_return_sequences, prompt_len + n)`` int64,
        the best hypotheses of prompt 0 first, best first, padded with ``pad_token_id`` after an EOS,
        ``n`` the longest returned hypothesis' length; ``scores`` ``(batch * num_return_sequences,)``
        float32, their length-penalised scores. Equal to ``generate(..., num_beams=...,
        length_penalty=..., early_stopping=..., num_return_sequences=..., output_scores=True,
        return_dict_in_generate=True)``'s ``sequences`` and ``sequences_scores``.

    Hint:
        Flatten ``(batch, num_beams)`` into the model's batch (``repeat_interleave`` the prompts and
        mask). Per step: :func:`decode_step`, ``log_softmax``, add each beam's score, view as
        ``(batch, num_beams * vocab)``, ``torch.topk``; ``index // vocab`` is the source beam and
        ``index % vocab`` the token. Move the caches with ``cache.reorder_cache(rows)`` (flat row
        indices of the source beams). Keep the pool as tensors of scores (``-inf`` = empty) and
        tokens, and merge new finished hypotheses with one ``topk`` over old and new. Forgetting the
        length normalisation, or normalising by the whole sequence's length (prompt included), picks
        other hypotheses.
    """
    raise NotImplementedError("Exercise 4.10: implement beam_search in generation.py")


# -- 4.11, 4.12: stop sequences --------------------------------------------------------------------------
@exercise("4.11", points=1, validate=_validate_stop_sequence_hit)
def stop_sequence_hit(input_ids: torch.Tensor, stop_sequences: list[list[int]]) -> torch.Tensor:
    """Which rows *end* with one of the stop sequences (a stopping criterion, checked after each step).

    Args:
        input_ids: ``(batch, seq)`` int64: the sequences so far.
        stop_sequences: lists of token ids, e.g. ``[[13, 13], [50256]]``; may be empty.

    Returns:
        ``(batch,)`` bool on ``input_ids``'s device: ``True`` where the last ``len(stop)`` tokens of the
        row equal some ``stop``. A stop sequence longer than the row never matches. An occurrence
        earlier in the row does not count (it was caught when it was made).

    Hint:
        Compare ``input_ids[:, -len(stop):]`` with the stop sequence as a tensor, ``.all(-1)``, and
        ``|`` over the stop sequences.
    """
    raise NotImplementedError("Exercise 4.11: implement stop_sequence_hit in generation.py")


@exercise("4.12", points=1, validate=_validate_stop_string_hit)
def stop_string_hit(token_texts: list[str], stop_strings: list[str]) -> bool:
    """Whether the last token completed one of the stop strings (text stops span token boundaries).

    Args:
        token_texts: the text of each token of one sequence, in order (``tokenizer.decode([id])`` per id).
        stop_strings: non-empty strings, e.g. ``["\\n\\n", "Question:"]``.

    Returns:
        ``True`` iff some stop string occurs in ``"".join(token_texts)`` and that occurrence *ends
        inside the last token*: the last token overlaps it (``["st", "op"]``, ``["las", "topper"]`` and
        ``["stop"]`` match ``"stop"``; ``["stop", "at"]`` does not, it was complete a token earlier).
        This is Hugging Face's ``StopStringCriteria``.

    Hint:
        Only the last token and the ``len(stop) - 1`` characters before it can hold such an occurrence:
        search ``stop`` in that window of the joined text.
    """
    raise NotImplementedError("Exercise 4.12: implement stop_string_hit in generation.py")


# -- models, text and stops (implemented: they call the exercises) ------------------------------------
def random_causal_lm(architecture: str = "llama", *, vocab_size: int = 96, hidden_size: int = 32, num_layers: int = 2,
                     num_heads: int = 4, num_kv_heads: int | None = 2, max_positions: int = 1024,
                     initializer_range: float = 0.2, bos_token_id: int = 1, eos_token_id: int = 2,
                     pad_token_id: int = 0, seed: int = 0) -> nn.Module:
    """A small randomly initialised Hugging Face causal LM (``"llama"``: ``LlamaForCausalLM``, ``"gpt2"``:
    ``GPT2LMHeadModel``), built offline from a config, in eval mode.

    Its text is nonsense, but every decoding algorithm behaves on it as on a trained model, which is
    all this chapter's comparisons with ``generate()`` need. ``initializer_range`` is larger than a
    real model's (0.02) so that its next-token distributions are peaked, as a trained model's are,
    instead of nearly uniform.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    special = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if architecture == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                             num_hidden_layers=num_layers, num_attention_heads=num_heads,
                             num_key_value_heads=num_kv_heads or num_heads, max_position_embeddings=max_positions,
                             initializer_range=initializer_range, **special)
        return LlamaForCausalLM(config).eval()
    if architecture == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
                            n_positions=max_positions, initializer_range=initializer_range, **special)
        return GPT2LMHeadModel(config).eval()
    raise ValueError(f"architecture must be 'llama' or 'gpt2', got {architecture!r}")


def cut_at_stops(sequences: torch.Tensor, prompt_len: int, *, stop_sequences: list[list[int]] | None = None,
                 stop_strings: list[str] | None = None, tokenizer=None, pad_token_id: int = 0) -> torch.Tensor:
    """Stop each row at the first generated token that completes a stop sequence or stop string.

    Args:
        sequences: ``(batch, prompt_len + n)``: prompts followed by generated tokens.
        prompt_len: where the generated tokens start.
        stop_sequences: token-id stops (:func:`stop_sequence_hit`).
        stop_strings: text stops (:func:`stop_string_hit`); they need ``tokenizer`` to decode tokens.
        pad_token_id: what replaces the tokens after a stop.

    Returns:
        ``sequences`` with everything after each row's stop set to ``pad_token_id``, trimmed to the
        longest row. Since a token never depends on later ones, this is what stopping *during*
        decoding gives (``generate(..., stop_strings=..., tokenizer=...)``), after decoding too far.
    """
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to turn tokens into text")
    sequences = sequences.clone()
    ends = []
    for row in range(sequences.shape[0]):
        end = sequences.shape[1]
        texts = [tokenizer.decode([t]) for t in sequences[row].tolist()] if stop_strings else []
        for t in range(prompt_len + 1, sequences.shape[1] + 1):
            if (stop_sequences and bool(stop_sequence_hit(sequences[row:row + 1, :t], stop_sequences)[0])) or \
                    (stop_strings and stop_string_hit(texts[:t], stop_strings)):
                end = t
                break
        sequences[row, end:] = pad_token_id
        ends.append(end)
    return sequences[:, :max(ends)]


def generate_text(model: nn.Module, tokenizer, prompts: str | list[str], *, max_new_tokens: int = 32,
                  strategy: str = "greedy", stop_strings: list[str] | None = None, **options) -> list[str]:
    """Prompts in, continuations out: tokenize (left padding), decode, cut at stop strings, detokenize.

    ``strategy`` picks the decoder: ``"greedy"`` (:func:`cached_greedy_search`), ``"sample"``
    (:func:`sample`; ``options`` give ``seed``, ``temperature``, ``top_k``, ...) or ``"beam"``
    (:func:`beam_search`; ``options`` give ``num_beams``, ...; the best hypothesis is returned).
    ``eos_token_id`` and ``pad_token_id`` default to the tokenizer's. Returns the generated text of
    each prompt (special tokens skipped), without the prompt.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    options.setdefault("eos_token_id", tokenizer.eos_token_id)
    options.setdefault("pad_token_id", tokenizer.pad_token_id)
    decoders = {"greedy": cached_greedy_search, "sample": sample, "beam": beam_search}
    if strategy not in decoders:
        raise ValueError(f"strategy must be one of {sorted(decoders)}, got {strategy!r}")
    sequences = decoders[strategy](model, input_ids, attention_mask, max_new_tokens=max_new_tokens, **options)
    if strategy == "beam":
        sequences = sequences[0]
    pad = eos_and_pad(options["eos_token_id"], options["pad_token_id"])[1]
    sequences = cut_at_stops(sequences, input_ids.shape[1], stop_strings=stop_strings, tokenizer=tokenizer,
                             pad_token_id=0 if pad is None else pad)
    return tokenizer.batch_decode(sequences[:, input_ids.shape[1]:], skip_special_tokens=True)


# -- plotting (implemented) -------------------------------------------------------------------------
def plot_filtered_distribution(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                               top_p: float | None = None, min_p: float | None = None, n: int = 30,
                               token_labels: Sequence[str] | None = None, ax=None, title: str | None = None):
    """The ``n`` most probable tokens of one next-token distribution, sorted, coloured by whether each
    filter keeps them, with the cumulative probability (the curve top-p cuts) on a second axis.

    Args:
        logits: ``(vocab,)`` (or ``(1, vocab)``) logits of one position.
        temperature: applied before the filters, as :func:`process_logits` does.
        top_k, top_p, min_p: the filters to show (``None``: not shown); each is drawn as its own cut.
        n: how many tokens to show.
        token_labels: the text of every token id (``vocab`` entries), for the x axis.
        ax: a matplotlib ``Axes`` (default: a new figure).

    Returns:
        The ``Axes``.
    """
    import matplotlib.pyplot as plt

    check_tensor("logits", logits, floating=True, min_ndim=1)
    scaled = logits.detach().float().cpu().reshape(1, -1) / temperature
    probs = scaled.softmax(dim=-1)[0]
    order = probs.argsort(descending=True)[:n]
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12.0, 2.0 + 0.3 * len(order)), 4.0))
    # (name, kept over the whole vocabulary, colour): the legend counts every kept token, not only those drawn
    cuts = [(name, fn(scaled, value)[0] > float("-inf"), colour)
            for name, fn, value, colour in (("top-k", top_k_filter, top_k, "tab:orange"),
                                            ("top-p", top_p_filter, top_p, "tab:green"),
                                            ("min-p", min_p_filter, min_p, "tab:purple")) if value is not None]
    kept = torch.ones(len(order), dtype=torch.bool)
    for _, keep, _ in cuts:
        kept &= keep[order]
    x = torch.arange(len(order)).numpy()
    ax.bar(x, probs[order].numpy(), color=["tab:blue" if k else "lightgray" for k in kept.tolist()])
    for name, keep, colour in cuts:
        shown = keep[order]
        last = int(shown.nonzero().max()) if shown.any() else -1
        label = {"top-k": f"top-k = {top_k}", "top-p": f"top-p = {top_p}", "min-p": f"min-p = {min_p}"}[name]
        ax.axvline(last + 0.5, color=colour, linestyle="--", label=f"{label}: keeps {int(keep.sum())}")
    cumulative = ax.twinx()
    cumulative.plot(x, probs[order].cumsum(0).numpy(), color="black", marker=".", linewidth=1)
    cumulative.set_ylim(0, 1.02)
    cumulative.set_ylabel("cumulative probability")
    if top_p is not None:
        cumulative.axhline(top_p, color="tab:green", linewidth=0.8)
    ax.set_xticks(x, [token_labels[i] for i in order.tolist()] if token_labels is not None else order.tolist(),
                  rotation=90)
    ax.set_xlabel("token (most probable first)")
    ax.set_ylabel(f"probability (temperature {temperature:g})")
    if cuts:
        ax.legend(loc="center right")
    if title:
        ax.set_title(title)
    return ax


def plot_temperatures(logits: torch.Tensor, temperatures: Sequence[float] = (0.5, 1.0, 2.0), *, n: int = 20,
                      ax=None, title: str | None = None):
    """The sorted probabilities of the ``n`` most probable tokens of one distribution at several
    temperatures (``softmax(logits / T)``): low ``T`` sharpens towards greedy, high ``T`` flattens
    towards uniform. Returns the ``Axes``."""
    import matplotlib.pyplot as plt

    check_tensor("logits", logits, floating=True, min_ndim=1)
    logits = logits.detach().float().cpu().reshape(-1)
    order = logits.argsort(descending=True)[:n]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 4.0))
    for t in temperatures:
        check_number("temperature", t, 0.0, open_minimum=True)
        ax.plot(range(len(order)), (logits / t).softmax(dim=-1)[order].numpy(), marker="o", label=f"T = {t:g}")
    ax.set_xlabel("token rank (by logit)")
    ax.set_ylabel("probability")
    ax.legend()
    if title:
        ax.set_title(title)
    return ax
