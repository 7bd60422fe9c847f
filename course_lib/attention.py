"""Chapter 2: attention, from scaled dot-product attention to grouped-query attention.

Attention is a soft lookup: every query scores every key, the scores become weights with a softmax,
and the output is the weighted average of the values. This chapter builds it in the order models
use it: the core operation (:func:`scaled_dot_product_attention`), the masks that say who may look at
whom (:func:`make_attention_mask`), multi-head attention with its projections
(:func:`multi_head_attention`, wrapped as the module :class:`MultiHeadAttention`) and grouped-query
attention, which shares keys and values between heads (:func:`repeat_kv`,
:func:`grouped_query_attention`, wrapped as :class:`GroupedQueryAttention`).

Conventions used by every exercise of this chapter:

- **Shapes.** Tensors entering attention are ``(batch, heads, seq, d_head)``: ``query`` is
  ``(batch, heads, q_len, d_head)``, ``key`` and ``value`` are ``(batch, heads, kv_len, d_head)``.
  Layers take and return ``(batch, seq, d_model)`` (batch first, as ``nn.MultiheadAttention(...,
  batch_first=True)`` and Hugging Face models do). Attention weights are ``(batch, heads, q_len,
  kv_len)``: row ``i`` holds how much query ``i`` takes from each key; it sums to 1 over keys.
- **Masks** follow ``torch.nn.functional.scaled_dot_product_attention``: a **boolean** mask is
  ``True`` where a query *may* attend to a key (``False`` blocks it); a **float** mask is *added* to
  the scores (``0`` keeps, ``-inf`` blocks; other values bias). A mask broadcasts to
  ``(batch, heads, q_len, kv_len)``. A padding mask from a tokenizer (``attention_mask``,
  ``(batch, kv_len)``) is ``1`` for real tokens and ``0`` for padding, as in Hugging Face.
  ``nn.MultiheadAttention``'s ``key_padding_mask`` and boolean ``attn_mask`` mean the opposite
  (``True`` = blocked): convert when comparing with it.
- **Causal.** ``is_causal=True`` in :func:`scaled_dot_product_attention` lets query ``i`` see keys
  ``j <= i`` (the *top-left* aligned triangle, exactly as torch's ``is_causal``; for
  ``q_len != kv_len`` this is rarely what you want). :func:`make_attention_mask` aligns the triangle
  *bottom-right* instead: the queries are the *last* ``q_len`` positions of the ``kv_len`` keys, as
  when decoding with a KV cache (Hugging Face's causal mask). Both agree when ``q_len == kv_len``.
- **Fully masked rows.** A query that may attend to no key at all (a padding query under left padding
  and a causal mask, say) has no distribution. Its weights are all **zero** and its output is
  **zero**, the convention of Chapter 0's ``stable_softmax`` (torch >= 2.5's SDPA does the same; a
  naive softmax, and older torch, give NaN, which then spreads through every later layer).
- **Dtypes.** Outputs have the dtype and device of ``query`` (or of the layer input). float32 and
  float64 must match torch to a few units in the last place; bfloat16/float16 may be computed with a
  float32 softmax.

The modules :class:`MultiHeadAttention` and :class:`GroupedQueryAttention` hold the weights
(``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` as ``nn.Linear``, Llama's names) and call the graded
functions with ``dict(module.named_parameters())`` -- the way ``nn.MultiheadAttention.forward``
calls ``F.multi_head_attention_forward``. So a test can grade the layer from plain tensors, and the
book can use the layer as any other module.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from course_lib.checks import check_bool, check_int, check_tensor
from course_lib.exercises import exercise

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


# -- argument checks (run before your code; they are not part of the exercises) -------------------
def _check_dropout(dropout_p) -> None:
    if not isinstance(dropout_p, (int, float)) or isinstance(dropout_p, bool) or not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1], got {dropout_p!r}")


def _check_mask(name: str, mask, target: tuple[int, ...], dims: str) -> None:
    check_tensor(name, mask)
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool mask (True = attend) or a float mask (added to the scores), "
                        f"got dtype {mask.dtype}")
    try:
        shape = torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        shape = None
    if shape != torch.Size(target):
        raise ValueError(f"{name} of shape {tuple(mask.shape)} does not broadcast to {dims} = {target}")


def _check_padding_mask(name: str, mask, batch: int, kv_len: int) -> None:
    check_tensor(name, mask)
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"{name} must be a bool or integer tensor of 1 (token) and 0 (padding), got {mask.dtype}")
    if tuple(mask.shape) != (batch, kv_len):
        raise ValueError(f"{name} must have shape (batch, kv_len) = {(batch, kv_len)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool and mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 (padding) and 1 (token)")


def _validate_sdpa(query, key, value, attn_mask=None, is_causal=False, dropout_p=0.0, scale=None,
                   return_weights=False) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_tensor(name, t, floating=True, min_ndim=2)
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(f"query, key and value must have the same dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    if not query.device == key.device == value.device:
        raise ValueError(f"query, key and value must be on one device, got {query.device}, {key.device}, {value.device}")
    if not query.ndim == key.ndim == value.ndim or query.shape[:-2] != key.shape[:-2] \
            or key.shape[:-2] != value.shape[:-2]:
        raise ValueError(f"query, key and value must have the same leading (batch, heads) dims, got shapes "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"key must have the d_head of query ({query.shape[-1]}) in its last dim, "
                         f"got shape {tuple(key.shape)}")
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(f"value must have as many positions as key ({key.shape[-2]}), got shape {tuple(value.shape)}")
    if 0 in (query.shape[-2], key.shape[-2], query.shape[-1]):
        raise ValueError(f"query and key must be non-empty (q_len, kv_len and d_head > 0), got shapes "
                         f"{tuple(query.shape)} and {tuple(key.shape)}")
    if attn_mask is not None:
        _check_mask("attn_mask", attn_mask, (*query.shape[:-1], key.shape[-2]), "(..., q_len, kv_len)")
        if attn_mask.is_floating_point() and attn_mask.dtype != query.dtype:
            raise TypeError(f"a float attn_mask must have the dtype of query ({query.dtype}), got {attn_mask.dtype}")
    check_bool("is_causal", is_causal)
    _check_dropout(dropout_p)
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
        raise TypeError(f"scale must be None or a number, got {type(scale).__name__}")
    check_bool("return_weights", return_weights)


def _validate_make_attention_mask(attention_mask, q_len, causal=True) -> None:
    check_tensor("attention_mask", attention_mask)
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must have shape (batch, kv_len), got {tuple(attention_mask.shape)}")
    _check_padding_mask("attention_mask", attention_mask, *attention_mask.shape)
    check_int("q_len", q_len, 1)
    check_bool("causal", causal)


def _check_weights(weights, required: Sequence[str], optional: Sequence[str]) -> None:
    if type(weights) is not dict:
        raise TypeError(f"weights must be a dict of name -> tensor, got {type(weights).__name__}")
    missing = [k for k in required if k not in weights]
    if missing:
        raise ValueError(f"weights is missing {missing} (expected keys {list(required)}, optionally {list(optional)})")
    unknown = sorted(set(weights) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"weights has unknown keys {unknown} (expected {list(required)}, optionally {list(optional)})")
    for k, w in weights.items():
        check_tensor(f"weights[{k!r}]", w, floating=True, min_ndim=2 if k.endswith("weight") else 1)


def _check_linear(weights, name: str, out_features: int | None, in_features: int, what: str) -> None:
    w = weights[f"{name}.weight"]
    if w.ndim != 2 or w.shape[1] != in_features or (out_features is not None and w.shape[0] != out_features):
        want = f"({out_features if out_features is not None else 'out'}, {in_features})"
        raise ValueError(f"weights['{name}.weight'] must have shape {want} ({what}), got {tuple(w.shape)}")
    b = weights.get(f"{name}.bias")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"weights['{name}.bias'] must have shape ({w.shape[0]},), got {tuple(b.shape)}")


def _validate_mha(weights, x, context=None, attention_mask=None, attn_mask=None, is_causal=False, dropout_p=0.0,
                  return_weights=False, *, n_heads) -> None:
    _check_weights(weights, [f"{p}.weight" for p in PROJECTIONS], [f"{p}.bias" for p in PROJECTIONS])
    check_tensor("x", x, floating=True)
    if x.ndim != 3 or 0 in x.shape:
        raise ValueError(f"x must have shape (batch, q_len, d_model) with no empty dim, got {tuple(x.shape)}")
    check_int("n_heads", n_heads, 1)
    batch, q_len, d_model = x.shape
    source = x
    if context is not None:
        check_tensor("context", context, floating=True)
        if context.ndim != 3 or context.shape[0] != batch or 0 in context.shape:
            raise ValueError(f"context must have shape (batch={batch}, kv_len, kv_dim), got {tuple(context.shape)}")
        if context.dtype != x.dtype:
            raise TypeError(f"context must have the dtype of x ({x.dtype}), got {context.dtype}")
        source = context
    inner = weights["q_proj.weight"].shape[0]
    if inner % n_heads:
        raise ValueError(f"q_proj's {inner} output features do not split into n_heads={n_heads} heads")
    _check_linear(weights, "q_proj", inner, d_model, "n_heads * d_head, d_model")
    _check_linear(weights, "k_proj", inner, source.shape[-1], "n_heads * d_head, kv_dim")
    _check_linear(weights, "v_proj", inner, source.shape[-1], "n_heads * d_head, kv_dim")
    _check_linear(weights, "o_proj", d_model, inner, "d_model, n_heads * d_head")
    for k, w in weights.items():
        if w.dtype != x.dtype:
            raise TypeError(f"weights[{k!r}] must have the dtype of x ({x.dtype}), got {w.dtype}")
    if attention_mask is not None:
        _check_padding_mask("attention_mask", attention_mask, batch, source.shape[1])
    if attn_mask is not None:
        _check_mask("attn_mask", attn_mask, (batch, n_heads, q_len, source.shape[1]),
                    "(batch, n_heads, q_len, kv_len)")
    check_bool("is_causal", is_causal)
    _check_dropout(dropout_p)
    check_bool("return_weights", return_weights)


def _validate_repeat_kv(x, n_rep) -> None:
    check_tensor("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (batch, n_kv_heads, seq, d_head), got {tuple(x.shape)}")
    check_int("n_rep", n_rep, 1)


def _validate_gqa(weights, x, attention_mask=None, is_causal=True, return_weights=False, *, n_heads,
                  n_kv_heads) -> None:
    _check_weights(weights, [f"{p}.weight" for p in PROJECTIONS], [f"{p}.bias" for p in PROJECTIONS])
    check_tensor("x", x, floating=True)
    if x.ndim != 3 or 0 in x.shape:
        raise ValueError(f"x must have shape (batch, seq, d_model) with no empty dim, got {tuple(x.shape)}")
    check_int("n_heads", n_heads, 1)
    check_int("n_kv_heads", n_kv_heads, 1)
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
    batch, seq, d_model = x.shape
    inner = weights["q_proj.weight"].shape[0]
    if inner % n_heads:
        raise ValueError(f"q_proj's {inner} output features do not split into n_heads={n_heads} heads")
    d_head = inner // n_heads
    _check_linear(weights, "q_proj", n_heads * d_head, d_model, "n_heads * d_head, d_model")
    _check_linear(weights, "k_proj", n_kv_heads * d_head, d_model, "n_kv_heads * d_head, d_model")
    _check_linear(weights, "v_proj", n_kv_heads * d_head, d_model, "n_kv_heads * d_head, d_model")
    _check_linear(weights, "o_proj", d_model, n_heads * d_head, "d_model, n_heads * d_head")
    for k, w in weights.items():
        if w.dtype != x.dtype:
            raise TypeError(f"weights[{k!r}] must have the dtype of x ({x.dtype}), got {w.dtype}")
    if attention_mask is not None:
        _check_padding_mask("attention_mask", attention_mask, batch, seq)
    check_bool("is_causal", is_causal)
    check_bool("return_weights", return_weights)


# -- exercises ------------------------------------------------------------------------------------
@exercise("2.1", points=4, validate=_validate_sdpa)
def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                                 dropout_p: float = 0.0, scale: float | None = None,
                                 return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``query`` over ``key``/``value``: ``softmax(q k^T * scale + mask) v``.

    Args:
        query: ``(batch, heads, q_len, d_head)`` float tensor (any number of leading dims works the
            same way; ``key`` and ``value`` must have the same leading dims).
        key: ``(batch, heads, kv_len, d_head)``.
        value: ``(batch, heads, kv_len, d_v)`` (usually ``d_v == d_head``).
        attn_mask: ``None``, a **bool** mask (``True`` = may attend) or a **float** mask of
            ``query``'s dtype added to the scores (``-inf`` blocks), broadcastable to
            ``(batch, heads, q_len, kv_len)``; e.g. ``(q_len, kv_len)`` or ``(batch, 1, 1, kv_len)``.
        is_causal: also block key ``j`` for query ``i`` when ``j > i`` (top-left aligned, as torch's
            ``is_causal``). It combines with ``attn_mask``: a key must pass both.
        dropout_p: probability of zeroing each attention weight after the softmax; kept weights are
            scaled by ``1 / (1 - dropout_p)`` (``nn.Dropout`` in training mode). Random numbers come
            from torch's global generator (``torch.manual_seed``). ``0.0`` (the default, and always
            in evaluation) means no dropout and a deterministic result.
        scale: multiplies the scores; ``None`` means ``1 / sqrt(d_head)``.
        return_weights: also return the attention weights.

    Returns:
        ``output`` of shape ``(batch, heads, q_len, d_v)`` with ``query``'s dtype and device, or
        ``(output, weights)`` when ``return_weights``: ``weights`` is ``(batch, heads, q_len, kv_len)``
        (the mask's broadcast shape included), each row sums to 1 over the keys it may attend to and
        is 0 on blocked keys; with dropout they are the weights *after* dropout, so that
        ``output == weights @ value`` always. A **fully masked** row has zero weights and a zero
        output (not NaN). Matches ``F.scaled_dot_product_attention`` (torch >= 2.5) when dropout is off.

    Hint:
        ``key.T`` is wrong for a 4-D tensor: it reverses *all* dims. Transpose the last two
        (``key.transpose(-2, -1)`` or ``key.mT``). Apply masks to the scores *before* the softmax
        (``masked_fill(~mask, float("-inf"))`` for a bool mask, ``+ mask`` for a float one); the causal
        mask is ``torch.ones(q_len, kv_len, dtype=torch.bool).tril()``. Normalise over the *key*
        axis (the last). Chapter 0's ``stable_softmax`` already turns a fully masked row into zeros;
        ``torch.softmax`` gives NaN there. Take the softmax in at least float32
        (``torch.promote_types(dtype, torch.float32)``) and cast back.
    """
    raise NotImplementedError("Exercise 2.1: implement scaled_dot_product_attention in attention.py")


@exercise("2.2", points=2, validate=_validate_make_attention_mask)
def make_attention_mask(attention_mask: torch.Tensor, q_len: int, causal: bool = True) -> torch.Tensor:
    """The boolean ``(batch, 1, q_len, kv_len)`` mask that padding (and causality) allow.

    Args:
        attention_mask: ``(batch, kv_len)`` tensor of 1 (real token) and 0 (padding), bool or
            integer, as a tokenizer returns it for a padded batch; padding may be on the right
            (``[1, 1, 1, 0]``) or on the left (``[0, 0, 1, 1]``, usual for generation).
        q_len: number of queries; they are the **last** ``q_len`` of the ``kv_len`` positions
            (``q_len == kv_len`` for a full forward pass, ``q_len == 1`` for one decoding step with a
            KV cache).
        causal: also block the future.

    Returns:
        A ``torch.bool`` tensor on ``attention_mask``'s device, shape ``(batch, 1, q_len, kv_len)``
        (the 1 broadcasts over heads), ``True`` where query ``i`` may attend to key ``j``: key ``j``
        is a real token, and, when ``causal``, ``j <= i + (kv_len - q_len)`` (bottom-right aligned:
        Hugging Face's causal mask; ``torch.nn.attention.bias.causal_lower_right``). Padding queries
        are *not* masked as rows: under left padding and ``causal`` a padding query sees no real
        token, so its row is all ``False`` -- a fully masked row, which
        :func:`scaled_dot_product_attention` turns into zeros. If ``q_len > kv_len`` the first
        ``q_len - kv_len`` rows are all ``False`` too.

    Hint:
        Build the two masks separately and broadcast: padding ``(batch, 1, 1, kv_len)``, causal
        ``(q_len, kv_len)`` from ``torch.tril(..., diagonal=kv_len - q_len)``; combine with ``&``.
        An off-by-one in ``diagonal`` hides the token itself (``j < i``) or shows the next one.
    """
    raise NotImplementedError("Exercise 2.2: implement make_attention_mask in attention.py")


@exercise("2.3", points=3, validate=_validate_mha)
def multi_head_attention(weights: dict[str, torch.Tensor], x: torch.Tensor, context: torch.Tensor | None = None,
                         attention_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                         is_causal: bool = False, dropout_p: float = 0.0, return_weights: bool = False, *,
                         n_heads: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Multi-head attention with separate q/k/v projections and an output projection.

    The forward pass of :class:`MultiHeadAttention`, as a function of its weights
    (``dict(layer.named_parameters())``).

    Args:
        weights: ``"q_proj.weight"`` ``(n_heads * d_head, d_model)``, ``"k_proj.weight"`` and
            ``"v_proj.weight"`` ``(n_heads * d_head, kv_dim)``, ``"o_proj.weight"``
            ``(d_model, n_heads * d_head)``, and optionally the ``".bias"`` of each (vectors of their
            output size; a missing bias means none). Each is applied as ``nn.Linear`` does:
            ``y = x @ W.T + b``.
        x: ``(batch, q_len, d_model)``: the queries' inputs (and the keys' and values', for
            self-attention).
        context: ``None`` for **self-attention**, or ``(batch, kv_len, kv_dim)`` for
            **cross-attention**: keys and values are projected from it (an encoder's output).
        attention_mask: ``None`` or ``(batch, kv_len)`` of 1 (token) / 0 (padding) for the keys.
        attn_mask: ``None`` or a bool/float mask broadcastable to ``(batch, n_heads, q_len, kv_len)``,
            meaning what it means for :func:`scaled_dot_product_attention`.
        is_causal: block the future, as :func:`scaled_dot_product_attention`'s ``is_causal``.
        dropout_p: attention dropout probability (the module passes 0 in eval mode).
        return_weights: also return the attention weights of every head.
        n_heads: number of heads; ``d_head = q_proj.weight.shape[0] // n_heads``.

    Returns:
        ``(batch, q_len, d_model)``, or ``(output, weights)`` with weights
        ``(batch, n_heads, q_len, kv_len)`` when ``return_weights``. A key passes if it passes every
        mask given. Matches ``nn.MultiheadAttention(d_model, n_heads, batch_first=True, kdim=kv_dim,
        vdim=kv_dim)`` with the same weights (its ``in_proj_weight`` is q, k and v stacked).

    Hint:
        Project, then split the features into heads: ``(batch, seq, n_heads * d_head)`` ->
        ``view(batch, seq, n_heads, d_head)`` -> ``transpose(1, 2)``. ``view(batch, n_heads, seq,
        d_head)`` has the right shape and the wrong numbers. Turn ``attention_mask`` into a
        ``(batch, 1, 1, kv_len)`` bool mask and combine it with ``attn_mask`` (``&`` with a bool
        one; ``masked_fill(~pad, -inf)`` on a float one). Merge the heads back with the inverse
        steps before ``o_proj``. Use your :func:`scaled_dot_product_attention` (so a mistake there
        shows up here too: get 2.1 right first).
    """
    raise NotImplementedError("Exercise 2.3: implement multi_head_attention in attention.py")


@exercise("2.4", points=1, validate=_validate_repeat_kv)
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head ``n_rep`` times, for grouped-query attention.

    Args:
        x: ``(batch, n_kv_heads, seq, d_head)`` keys or values.
        n_rep: how many query heads share each key/value head (``n_heads // n_kv_heads``).

    Returns:
        ``(batch, n_kv_heads * n_rep, seq, d_head)`` with the same dtype and device, where output head
        ``h`` is input head ``h // n_rep``: the copies of one head are *adjacent*
        (``[k0, k0, k1, k1]`` for ``n_rep=2``), as Llama's ``repeat_kv`` and
        ``torch.repeat_interleave(x, n_rep, dim=1)`` do. ``n_rep == 1`` returns ``x`` unchanged.

    Hint:
        ``x.repeat(1, n_rep, 1, 1)`` gives ``[k0, k1, k0, k1]``: every query head then reads the
        wrong keys. ``x[:, :, None].expand(...)`` then ``reshape`` copies once, at the end.
    """
    raise NotImplementedError("Exercise 2.4: implement repeat_kv in attention.py")


@exercise("2.5", points=3, validate=_validate_gqa)
def grouped_query_attention(weights: dict[str, torch.Tensor], x: torch.Tensor,
                            attention_mask: torch.Tensor | None = None, is_causal: bool = True,
                            return_weights: bool = False, *, n_heads: int,
                            n_kv_heads: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query self-attention: ``n_heads`` query heads share ``n_kv_heads`` key/value heads.

    The forward pass of :class:`GroupedQueryAttention` (and of Llama's attention without rotary
    position embeddings, which are Chapter 3's). ``n_kv_heads == n_heads`` is ordinary multi-head
    attention, ``n_kv_heads == 1`` is multi-query attention (MQA).

    Args:
        weights: ``"q_proj.weight"`` ``(n_heads * d_head, d_model)``, ``"k_proj.weight"`` and
            ``"v_proj.weight"`` ``(n_kv_heads * d_head, d_model)``, ``"o_proj.weight"``
            ``(d_model, n_heads * d_head)``, optionally their ``".bias"``; Llama's names and shapes,
            so ``dict(llama_attention.named_parameters())`` fits.
        x: ``(batch, seq, d_model)``.
        attention_mask: ``None`` or ``(batch, seq)`` of 1 (token) / 0 (padding).
        is_causal: block the future (a decoder's self-attention: the default).
        return_weights: also return the attention weights ``(batch, n_heads, seq, seq)``.
        n_heads, n_kv_heads: query heads and key/value heads; ``n_heads % n_kv_heads == 0`` and
            ``d_head = q_proj.weight.shape[0] // n_heads``.

    Returns:
        ``(batch, seq, d_model)`` (or ``(output, weights)``). Query head ``h`` uses key/value head
        ``h // (n_heads // n_kv_heads)``, as in Llama. A padding query under left padding and a
        causal mask sees nothing: its row of the attention output is zero before ``o_proj`` (so the
        layer returns ``o_proj``'s bias there; Hugging Face returns something else for those rows,
        which no real token ever reads).

    Hint:
        As :func:`multi_head_attention`, but ``k_proj``/``v_proj`` give ``n_kv_heads`` heads; expand
        them with :func:`repeat_kv` before :func:`scaled_dot_product_attention`. Build the mask with
        :func:`make_attention_mask`.
    """
    raise NotImplementedError("Exercise 2.5: implement grouped_query_attention in attention.py")


# -- layers (implemented: they hold the weights and call the exercises) ------------------------------
class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al., 2017) with separate q/k/v projections.

    ``MultiHeadAttention(d_model, n_heads)`` is self-attention; with ``kv_dim`` its keys and values
    come from a ``context`` of another width (cross-attention to an encoder). The forward pass is
    :func:`multi_head_attention` (exercise 2.3) on this layer's parameters; attention dropout acts in
    training mode only.
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True, kv_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        check_int("d_model", d_model, 1)
        check_int("n_heads", n_heads, 1)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        _check_dropout(dropout)
        kv_dim = d_model if kv_dim is None else check_int("kv_dim", kv_dim, 1)
        self.d_model, self.n_heads, self.kv_dim, self.dropout = d_model, n_heads, kv_dim, dropout
        self.d_head = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(kv_dim, d_model, bias=bias)
        self.v_proj = nn.Linear(kv_dim, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False, return_weights: bool = False):
        """``(batch, q_len, d_model)`` -> ``(batch, q_len, d_model)``; see :func:`multi_head_attention`."""
        return multi_head_attention(dict(self.named_parameters()), x, context, attention_mask, attn_mask,
                                    is_causal, self.dropout if self.training else 0.0, return_weights,
                                    n_heads=self.n_heads)

    @classmethod
    def from_torch(cls, layer: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A copy of a ``nn.MultiheadAttention`` (its ``in_proj_weight`` split into q, k and v)."""
        if not isinstance(layer, nn.MultiheadAttention):
            raise TypeError(f"layer must be an nn.MultiheadAttention, got {type(layer).__name__}")
        if layer.bias_k is not None or layer.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn have no counterpart in MultiHeadAttention")
        if layer.kdim != layer.vdim:
            raise ValueError(f"kdim ({layer.kdim}) and vdim ({layer.vdim}) must be equal")
        bias = layer.in_proj_bias is not None
        new = cls(layer.embed_dim, layer.num_heads, bias=bias, kv_dim=layer.kdim, dropout=layer.dropout)
        d = layer.embed_dim
        if layer._qkv_same_embed_dim:
            q, k, v = layer.in_proj_weight.detach().split(d)
        else:
            q, k, v = (w.detach() for w in (layer.q_proj_weight, layer.k_proj_weight, layer.v_proj_weight))
        state = {"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v,
                 "o_proj.weight": layer.out_proj.weight.detach()}
        if bias:
            for name, b in zip(("q_proj", "k_proj", "v_proj"), layer.in_proj_bias.detach().split(d)):
                state[f"{name}.bias"] = b
            state["o_proj.bias"] = layer.out_proj.bias.detach()
        new.load_state_dict(state)
        return new.to(layer.out_proj.weight.device, layer.out_proj.weight.dtype)


class GroupedQueryAttention(nn.Module):
    """Grouped-query self-attention (Ainslie et al., 2023): ``n_kv_heads`` key/value heads shared by
    ``n_heads`` query heads; ``n_kv_heads=1`` is multi-query attention (Shazeer, 2019).

    Parameter names and shapes are Llama's (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``; no bias by
    default), so ``layer.load_state_dict(llama_attention.state_dict())`` copies a Hugging Face
    ``LlamaAttention``. The forward pass is :func:`grouped_query_attention` (exercise 2.5); there is
    no rotary position embedding here (Chapter 3 adds it).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, d_head: int | None = None,
                 bias: bool = False):
        super().__init__()
        check_int("d_model", d_model, 1)
        check_int("n_heads", n_heads, 1)
        check_int("n_kv_heads", n_kv_heads, 1)
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads} (or give d_head)")
            d_head = d_model // n_heads
        check_int("d_head", d_head, 1)
        self.d_model, self.n_heads, self.n_kv_heads, self.d_head = d_model, n_heads, n_kv_heads, d_head
        self.q_proj = nn.Linear(d_model, n_heads * d_head, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * d_head, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * d_head, bias=bias)
        self.o_proj = nn.Linear(n_heads * d_head, d_model, bias=bias)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, is_causal: bool = True,
                return_weights: bool = False):
        """``(batch, seq, d_model)`` -> ``(batch, seq, d_model)``; see :func:`grouped_query_attention`."""
        return grouped_query_attention(dict(self.named_parameters()), x, attention_mask, is_causal, return_weights,
                                       n_heads=self.n_heads, n_kv_heads=self.n_kv_heads)

    def kv_cache_bytes(self, batch: int, seq_len: int, dtype: torch.dtype = torch.float16) -> int:
        """Bytes this layer's KV cache takes for ``batch`` sequences of ``seq_len`` tokens."""
        return kv_cache_bytes(1, batch, seq_len, self.n_kv_heads, self.d_head, dtype)


# -- cost of attention (implemented) -----------------------------------------------------------------
def _itemsize(dtype: torch.dtype) -> int:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    return torch.empty((), dtype=dtype).element_size()


def attention_memory_bytes(batch: int, n_heads: int, q_len: int, kv_len: int,
                           dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one ``(batch, n_heads, q_len, kv_len)`` score matrix: what the textbook ("math")
    attention materialises, once for the scores and again for the weights. It grows with
    ``q_len * kv_len``; fused kernels (FlashAttention) never hold it, so their extra memory grows only
    with the sequence length."""
    for name, v in (("batch", batch), ("n_heads", n_heads), ("q_len", q_len), ("kv_len", kv_len)):
        check_int(name, v, 1)
    return batch * n_heads * q_len * kv_len * _itemsize(dtype)


def attention_flops(batch: int, n_heads: int, q_len: int, kv_len: int, d_head: int) -> int:
    """Floating-point operations of the two matrix products of attention (``q k^T`` and
    ``weights v``): ``2 * 2 * batch * n_heads * q_len * kv_len * d_head`` (a multiply-add is 2)."""
    for name, v in (("batch", batch), ("n_heads", n_heads), ("q_len", q_len), ("kv_len", kv_len),
                    ("d_head", d_head)):
        check_int(name, v, 1)
    return 4 * batch * n_heads * q_len * kv_len * d_head


def kv_cache_bytes(n_layers: int, batch: int, seq_len: int, n_kv_heads: int, d_head: int,
                   dtype: torch.dtype = torch.float16) -> int:
    """Bytes of a KV cache: keys and values (2) of ``n_layers`` layers for ``batch * seq_len`` tokens,
    ``n_kv_heads * d_head`` numbers each. With ``n_kv_heads = n_heads`` (MHA) it is ``n_heads /
    n_kv_heads`` times that of GQA, and ``n_heads`` times that of MQA (``n_kv_heads = 1``)."""
    for name, v in (("n_layers", n_layers), ("batch", batch), ("seq_len", seq_len), ("n_kv_heads", n_kv_heads),
                    ("d_head", d_head)):
        check_int(name, v, 1)
    return 2 * n_layers * batch * seq_len * n_kv_heads * d_head * _itemsize(dtype)


# -- plotting (implemented) ------------------------------------------------------------------------
def plot_attention(weights: torch.Tensor, tokens_q: Sequence[str] | None = None,
                   tokens_k: Sequence[str] | None = None, ax=None, title: str | None = None,
                   cmap: str = "viridis", annotate: bool | None = None):
    """Draw one attention map: queries as rows (top to bottom), keys as columns.

    Args:
        weights: ``(q_len, kv_len)`` weights (any leading dims of size 1 are squeezed; pick one head
            of a ``(batch, heads, q_len, kv_len)`` tensor with ``weights[b, h]``).
        tokens_q, tokens_k: labels of the rows and columns (default: positions); ``tokens_k``
            defaults to ``tokens_q`` when the map is square.
        ax: a matplotlib ``Axes`` to draw on (default: a new figure).
        title: the axes title.
        cmap: the colour map; weights are shown on ``[0, 1]`` so that maps can be compared.
        annotate: write each weight in its cell (default: when the map has at most 12 x 12 cells).

    Returns:
        The ``Axes``.
    """
    import matplotlib.pyplot as plt

    check_tensor("weights", weights, floating=True, min_ndim=2)
    w = weights.detach().float().cpu()
    while w.ndim > 2 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 2:
        raise ValueError(f"weights must be (q_len, kv_len) after squeezing leading 1s, got {tuple(weights.shape)}")
    q_len, kv_len = w.shape
    if tokens_k is None and tokens_q is not None and q_len == kv_len:
        tokens_k = tokens_q
    for name, labels, n in (("tokens_q", tokens_q, q_len), ("tokens_k", tokens_k, kv_len)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} has {len(labels)} labels for {n} positions")
    if ax is None:
        size = min(10.0, 2.0 + 0.4 * max(q_len, kv_len))
        _, ax = plt.subplots(figsize=(size, size * q_len / kv_len if kv_len else size))
    image = ax.imshow(w.numpy(), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(kv_len), list(tokens_k) if tokens_k is not None else range(kv_len),
                  rotation=90 if tokens_k is not None else 0)
    ax.set_yticks(range(q_len), list(tokens_q) if tokens_q is not None else range(q_len))
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    if annotate is None:
        annotate = q_len <= 12 and kv_len <= 12
    if annotate:
        for i in range(q_len):
            for j in range(kv_len):
                value = float(w[i, j])
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if value > 0.6 else "white")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax

