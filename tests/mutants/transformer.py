"""Plausible wrong answers to Chapter 3's exercises. Each must fail at least one graded test
(``pytest --against mutants``). They are kept out of the student handout.

Each variant changes one thing in an otherwise correct implementation (the parametrised helpers
below are the correct versions; the mutants switch one of their knobs), so that the test that
catches it catches that mistake. Parts that are not the exercise's own come from ``course_lib``
(the reference in solution mode).
"""


import torch
import torch.nn.functional as F

from course_lib.attention import multi_head_attention
from course_lib.transformer import (apply_rope, attend, feed_forward, layer_norm, linear, rms_norm, sub_weights)


# -- 3.1 sinusoidal_positions ----------------------------------------------------------------------------
def _sinusoids(seq_len, d_model, base=10000.0, *, pair_exponent=lambda i, d: 2 * i / d, swap=False,
               interleave=True):
    i = torch.arange(d_model // 2, dtype=torch.float64)
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] / base ** pair_exponent(i, d_model)
    first, second = (angles.cos(), angles.sin()) if swap else (angles.sin(), angles.cos())
    if interleave:
        return torch.stack([first, second], dim=-1).flatten(-2).float()
    return torch.cat([first, second], dim=-1).float()


def pe_sin_and_cos_swapped(seq_len, d_model, base=10000.0):
    return _sinusoids(seq_len, d_model, base, swap=True)


def pe_sin_then_cos_halves(seq_len, d_model, base=10000.0):
    """tensor2tensor's layout (all sines, then all cosines): fine for a model, not the paper's table."""
    return _sinusoids(seq_len, d_model, base, interleave=False)


def pe_exponent_i_over_d(seq_len, d_model, base=10000.0):
    return _sinusoids(seq_len, d_model, base, pair_exponent=lambda i, d: i / d)


# -- 3.2 embed -------------------------------------------------------------------------------------------------
def _embed(weights, input_ids, position_ids=None, scale=1.0, *, scale_positions=False, use_position_ids=True):
    x = weights["embed_tokens.weight"][input_ids] * scale
    table = weights.get("embed_positions.weight")
    if table is None:
        return x
    if position_ids is None or not use_position_ids:
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    positions = table[position_ids]
    return (x + positions * scale) if scale_positions else (x + positions)


def embed_scales_positions_too(weights, input_ids, position_ids=None, scale=1.0):
    return _embed(weights, input_ids, position_ids, scale, scale_positions=True)


def embed_ignores_position_ids(weights, input_ids, position_ids=None, scale=1.0):
    return _embed(weights, input_ids, position_ids, scale, use_position_ids=False)


# -- 3.3 apply_rope --------------------------------------------------------------------------------------------
def _rope(x, position_ids, base=10000.0, *, interleaved=False, sign=1.0, pair_exponent=2, use_position_ids=True):
    d = x.shape[-1]
    theta = 1.0 / base ** (torch.arange(0, d, 2, device=x.device).float() * pair_exponent / 2 / d)
    if not use_position_ids:
        position_ids = torch.arange(x.shape[2], device=x.device)[None].expand(x.shape[0], -1)
    angles = position_ids[..., None].float() * theta                        # (batch, seq, d/2)
    if interleaved:  # GPT-J / the paper: pairs (2j, 2j + 1)
        cos, sin = angles.cos()[:, None].to(x.dtype), angles.sin()[:, None].to(x.dtype)
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    half = d // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sign
    return x * angles.cos().to(x.dtype) + rotated * angles.sin().to(x.dtype)


def rope_rotates_adjacent_pairs(x, position_ids, base=10000.0):
    """Rotating the wrong halves: the paper's (2j, 2j+1) pairs where Hugging Face uses (j, j + d/2)."""
    return _rope(x, position_ids, base, interleaved=True)


def rope_rotation_the_wrong_way(x, position_ids, base=10000.0):
    return _rope(x, position_ids, base, sign=-1.0)


def rope_exponent_j_over_d(x, position_ids, base=10000.0):
    return _rope(x, position_ids, base, pair_exponent=1)


def rope_ignores_position_ids(x, position_ids, base=10000.0):
    return _rope(x, position_ids, base, use_position_ids=False)


# -- 3.4 layer_norm and 3.5 rms_norm ----------------------------------------------------------------------------
def _layer_norm(x, weight=None, bias=None, eps=1e-5, *, dim=-1, unbiased=False, eps_outside=False):
    h = x.to(torch.promote_types(x.dtype, torch.float32))
    mean, var = h.mean(dim, keepdim=True), h.var(dim, keepdim=True, unbiased=unbiased)
    h = (h - mean) / (var.sqrt() + eps if eps_outside else (var + eps).sqrt())
    if weight is not None:
        h = h * weight
    if bias is not None:
        h = h + bias
    return h.to(x.dtype)


def layer_norm_over_the_first_axis(x, weight=None, bias=None, eps=1e-5):
    """Normalising across the batch (batch norm's axis), not over each vector's features."""
    return _layer_norm(x, weight, bias, eps, dim=0)


def layer_norm_unbiased_variance(x, weight=None, bias=None, eps=1e-5):
    return _layer_norm(x, weight, bias, eps, unbiased=True)


def layer_norm_eps_outside_the_sqrt(x, weight=None, bias=None, eps=1e-5):
    return _layer_norm(x, weight, bias, eps, eps_outside=True)


def _rms_norm(x, weight=None, eps=1e-6, *, center=False, eps_outside=False, dim=-1):
    h = x.float()
    if center:
        h = h - h.mean(dim, keepdim=True)
    ms = h.pow(2).mean(dim, keepdim=True)
    h = (h / (ms.sqrt() + eps) if eps_outside else h * torch.rsqrt(ms + eps)).to(x.dtype)
    return h * weight if weight is not None else h


def rms_norm_subtracts_the_mean(x, weight=None, eps=1e-6):
    return _rms_norm(x, weight, eps, center=True)


def rms_norm_eps_outside_the_sqrt(x, weight=None, eps=1e-6):
    return _rms_norm(x, weight, eps, eps_outside=True)


def rms_norm_over_the_sequence_axis(x, weight=None, eps=1e-6):
    return _rms_norm(x, weight, eps, dim=-2)


# -- 3.6 feed_forward ---------------------------------------------------------------------------------------------
def _feed_forward(weights, x, activation, *, gate_on_up=False, gate=F.silu, gelu_approximate=None):
    if activation == "swiglu":
        g, u = linear(weights, "gate_proj", x), linear(weights, "up_proj", x)
        if gate_on_up:
            g, u = u, g
        return linear(weights, "down_proj", gate(g) * u)
    h = linear(weights, "fc_in", x)
    if activation == "relu":
        h = F.relu(h)
    else:
        default = "tanh" if activation == "gelu_tanh" else "none"
        h = F.gelu(h, approximate=gelu_approximate or default)
    return linear(weights, "fc_out", h)


def swiglu_activation_on_the_up_branch(weights, x, activation):
    return _feed_forward(weights, x, activation, gate_on_up=True)


def swiglu_with_a_sigmoid_gate(weights, x, activation):
    """GLU (Dauphin et al.) where SwiGLU was asked: sigmoid(g) * u instead of silu(g) * u."""
    return _feed_forward(weights, x, activation, gate=torch.sigmoid)


def gelu_always_exact(weights, x, activation):
    return _feed_forward(weights, x, activation, gelu_approximate="none")


def gelu_always_tanh(weights, x, activation):
    return _feed_forward(weights, x, activation, gelu_approximate="tanh")


# -- 3.7 encoder_layer and 3.8 decoder_layer --------------------------------------------------------------------
def _layer(weights, x, memory, masks, norm_first, n_heads, activation, eps, *, force_pre=None, residual=True,
           cross_source="memory", causal=True, norm_names=("norm1", "norm2", "norm3")):
    """One encoder (``memory is None``) or decoder layer; the knobs make it wrong in one way."""
    attention_mask, attn_mask, memory_mask = masks
    pre = norm_first if force_pre is None else force_pre

    def norm(i, h):
        name = norm_names[i]
        return layer_norm(h, weights[f"{name}.weight"], weights.get(f"{name}.bias"), eps)

    sublayers = [lambda h: multi_head_attention(sub_weights(weights, "self_attn"), h, attention_mask=attention_mask,
                                                attn_mask=attn_mask, is_causal=memory is not None and causal,
                                                n_heads=n_heads)]
    if memory is not None:
        sublayers.append(lambda h: multi_head_attention(sub_weights(weights, "cross_attn"), h,
                                                        memory if cross_source == "memory" else h,
                                                        attention_mask=memory_mask if cross_source == "memory"
                                                        else attention_mask, n_heads=n_heads))
    sublayers.append(lambda h: feed_forward(sub_weights(weights, "mlp"), h, activation))
    for i, sublayer in enumerate(sublayers):
        keep = x if residual or i > 0 else 0.0
        x = keep + sublayer(norm(i, x)) if pre else norm(i, keep + sublayer(x))
    return x


def encoder_post_norm_when_pre_norm_asked(weights, x, attention_mask=None, attn_mask=None, norm_first=True, *,
                                          n_heads, activation="relu", eps=1e-5):
    return _layer(weights, x, None, (attention_mask, attn_mask, None), norm_first, n_heads, activation, eps,
                  force_pre=False)


def encoder_pre_norm_always(weights, x, attention_mask=None, attn_mask=None, norm_first=True, *, n_heads,
                            activation="relu", eps=1e-5):
    return _layer(weights, x, None, (attention_mask, attn_mask, None), norm_first, n_heads, activation, eps,
                  force_pre=True)


def encoder_missing_attention_residual(weights, x, attention_mask=None, attn_mask=None, norm_first=True, *, n_heads,
                                       activation="relu", eps=1e-5):
    return _layer(weights, x, None, (attention_mask, attn_mask, None), norm_first, n_heads, activation, eps,
                  residual=False)


def encoder_ignores_padding(weights, x, attention_mask=None, attn_mask=None, norm_first=True, *, n_heads,
                            activation="relu", eps=1e-5):
    return _layer(weights, x, None, (None, attn_mask, None), norm_first, n_heads, activation, eps)


def decoder_cross_attention_reads_decoder_states(weights, x, memory, attention_mask=None, memory_attention_mask=None,
                                                 is_causal=True, norm_first=True, *, n_heads, activation="relu",
                                                 eps=1e-5):
    return _layer(weights, x, memory, (attention_mask, None, memory_attention_mask), norm_first, n_heads, activation,
                  eps, cross_source="decoder", causal=is_causal)


def decoder_not_causal(weights, x, memory, attention_mask=None, memory_attention_mask=None, is_causal=True,
                       norm_first=True, *, n_heads, activation="relu", eps=1e-5):
    return _layer(weights, x, memory, (attention_mask, None, memory_attention_mask), norm_first, n_heads, activation,
                  eps, causal=False)


def decoder_post_norm_when_pre_norm_asked(weights, x, memory, attention_mask=None, memory_attention_mask=None,
                                          is_causal=True, norm_first=True, *, n_heads, activation="relu", eps=1e-5):
    return _layer(weights, x, memory, (attention_mask, None, memory_attention_mask), norm_first, n_heads, activation,
                  eps, force_pre=False, causal=is_causal)


def decoder_norms_in_the_wrong_order(weights, x, memory, attention_mask=None, memory_attention_mask=None,
                                     is_causal=True, norm_first=True, *, n_heads, activation="relu", eps=1e-5):
    return _layer(weights, x, memory, (attention_mask, None, memory_attention_mask), norm_first, n_heads, activation,
                  eps, causal=is_causal, norm_names=("norm1", "norm3", "norm2"))


# -- 3.9 decoder_block --------------------------------------------------------------------------------------------
def _block(weights, hidden_states, position_ids, attention_mask=None, past_key=None, past_value=None,
           attn_implementation="eager", *, config, rope=apply_rope, rope_values=False, rope_keys=True, pre=True,
           residual=True, use_past=True):
    def norm(name, h):
        if config["norm_type"] == "rmsnorm":
            return rms_norm(h, weights[f"{name}.weight"], config["norm_eps"])
        return layer_norm(h, weights[f"{name}.weight"], weights.get(f"{name}.bias"), config["norm_eps"])

    def heads(h, n):
        return h.view(*h.shape[:2], n, -1).transpose(1, 2)

    batch, seq, _ = hidden_states.shape
    x = hidden_states
    h = norm("input_layernorm", x) if pre else x
    q = heads(linear(weights, "self_attn.q_proj", h), config["num_attention_heads"])
    k = heads(linear(weights, "self_attn.k_proj", h), config["num_key_value_heads"])
    v = heads(linear(weights, "self_attn.v_proj", h), config["num_key_value_heads"])
    if config["position_embedding_type"] == "rope":
        q = rope(q, position_ids, config["rope_theta"])
        if rope_keys:
            k = rope(k, position_ids, config["rope_theta"])
        if rope_values:
            v = rope(v, position_ids, config["rope_theta"])
    keys, values, mask = k, v, attention_mask
    if past_key is not None:
        if use_past:
            keys, values = torch.cat([past_key, k], 2), torch.cat([past_value, v], 2)
        elif mask is not None:
            mask = mask[:, past_key.shape[2]:]
    out = attend(q, keys, values, mask, attn_implementation).transpose(1, 2).reshape(batch, seq, -1)
    attn = linear(weights, "self_attn.o_proj", out)
    x = (x + attn if residual else attn) if pre else norm("input_layernorm", x + attn)
    mlp = feed_forward(sub_weights(weights, "mlp"), norm("post_attention_layernorm", x) if pre else x,
                       config["hidden_act"])
    x = x + mlp if pre else norm("post_attention_layernorm", x + mlp)
    return x, k, v


def block_rope_applied_to_values_too(weights, hidden_states, position_ids, attention_mask=None, past_key=None,
                                     past_value=None, attn_implementation="eager", *, config):
    return _block(weights, hidden_states, position_ids, attention_mask, past_key, past_value, attn_implementation,
                  config=config, rope_values=True)


def block_rope_on_queries_only(weights, hidden_states, position_ids, attention_mask=None, past_key=None,
                               past_value=None, attn_implementation="eager", *, config):
    return _block(weights, hidden_states, position_ids, attention_mask, past_key, past_value, attn_implementation,
                  config=config, rope_keys=False)


def block_rope_rotating_the_wrong_halves(weights, hidden_states, position_ids, attention_mask=None, past_key=None,
                                         past_value=None, attn_implementation="eager", *, config):
    return _block(weights, hidden_states, position_ids, attention_mask, past_key, past_value, attn_implementation,
                  config=config, rope=rope_rotates_adjacent_pairs)


def block_post_norm_where_pre_norm_is_asked(weights, hidden_states, position_ids, attention_mask=None, past_key=None,
                                            past_value=None, attn_implementation="eager", *, config):
    return _block(weights, hidden_states, position_ids, attention_mask, past_key, past_value, attn_implementation,
                  config=config, pre=False)


def block_missing_attention_residual(weights, hidden_states, position_ids, attention_mask=None, past_key=None,
                                     past_value=None, attn_implementation="eager", *, config):
    return _block(weights, hidden_states, position_ids, attention_mask, past_key, past_value, attn_implementation,
                  config=config, residual=False)


def block_ignores_the_kv_cache(weights, hidden_states, position_ids, attention_mask=None, past_key=None,
                               past_value=None, attn_implementation="eager", *, config):
    return _block(weights, hidden_states, position_ids, attention_mask, past_key, past_value, attn_implementation,
                  config=config, use_past=False)


# -- 3.10 count_parameters and 3.11 flops_per_token ----------------------------------------------------------------
def _count(config, *, tied_counted=False, kv_heads_key="num_key_value_heads", layernorm_bias=True,
           swiglu_matrices=3):
    d, d_ff, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    n_heads, n_kv, d_head = config["num_attention_heads"], config[kv_heads_key], config["head_dim"]
    swiglu = config["hidden_act"] == "swiglu"
    layer = 2 * d * n_heads * d_head + 2 * d * n_kv * d_head + (swiglu_matrices if swiglu else 2) * d * d_ff
    if config["attention_bias"]:
        layer += (n_heads + 2 * n_kv) * d_head + d
    if config["mlp_bias"]:
        layer += (2 * d_ff if swiglu else d_ff) + d
    norm = 2 * d if config["norm_type"] == "layernorm" and layernorm_bias else d
    total = vocab * d + config["num_hidden_layers"] * (layer + 2 * norm) + norm
    if config["position_embedding_type"] == "learned":
        total += config["max_position_embeddings"] * d
    if tied_counted or not config["tie_word_embeddings"]:
        total += vocab * d
    return total


def count_tied_output_layer_twice(config):
    """Untied embeddings where tying was asked: the output layer counted as a matrix of its own."""
    return _count(config, tied_counted=True)


def count_kv_with_query_heads(config):
    return _count(config, kv_heads_key="num_attention_heads")


def count_layernorm_without_bias(config):
    return _count(config, layernorm_bias=False)


def count_swiglu_with_two_matrices(config):
    return _count(config, swiglu_matrices=2)


def _flops(config, seq_len, *, per_mac=2, attention=4, output_layer=True, kv_heads_key="num_key_value_heads"):
    d, d_head = config["hidden_size"], config["head_dim"]
    layer = (2 * d * config["num_attention_heads"] * d_head + 2 * d * config[kv_heads_key] * d_head
             + (3 if config["hidden_act"] == "swiglu" else 2) * d * config["intermediate_size"])
    weights = config["num_hidden_layers"] * layer + (config["vocab_size"] * d if output_layer else 0)
    return per_mac * weights + attention * config["num_hidden_layers"] * seq_len * config["num_attention_heads"] * d_head


def flops_counts_multiply_adds_once(config, seq_len):
    return _flops(config, seq_len, per_mac=1, attention=2)


def flops_without_attention_products(config, seq_len):
    return _flops(config, seq_len, attention=0)


def flops_kaplan_causal_half(config, seq_len):
    """Kaplan's 2 n_layer n_ctx d_attn: right for useful work under a causal mask, not for a dense kernel."""
    return _flops(config, seq_len, attention=2)


def flops_without_the_output_layer(config, seq_len):
    return _flops(config, seq_len, output_layer=False)


# -- wrong answers written from the contract alone (issue 16): state, arguments, dtypes, config -------
_TABLES = {}


def pe_cached_by_width(seq_len, d_model, base=10000.0):
    """A table per d_model, grown on demand and sliced: the base of the first call sticks."""
    table = _TABLES.get(d_model)
    if table is None or table.shape[0] < seq_len:
        table = _TABLES[d_model] = _sinusoids(max(seq_len, 64), d_model, base)
    return table[:seq_len]


_SHARED = {}


def pe_returning_a_shared_table(seq_len, d_model, base=10000.0):
    """Cached by every argument, but the caller gets the cached tensor itself (and may change it)."""
    key = (seq_len, d_model, base)
    if key not in _SHARED:
        _SHARED[key] = _sinusoids(seq_len, d_model, base)
    return _SHARED[key]


def embed_scaling_only_with_a_position_table(weights, input_ids, position_ids=None, scale=1.0):
    return _embed(weights, input_ids, position_ids, scale if "embed_positions.weight" in weights else 1.0)


def embed_in_float32(weights, input_ids, position_ids=None, scale=1.0):
    return _embed({k: v.float() for k, v in weights.items()}, input_ids, position_ids, scale)


def embed_scaling_the_callers_table_in_place(weights, input_ids, position_ids=None, scale=1.0):
    if scale != 1.0:
        weights["embed_tokens.weight"].mul_(scale)
    return _embed(weights, input_ids, position_ids, 1.0)


def rope_angles_in_the_input_dtype(x, position_ids, base=10000.0):
    d = x.shape[-1]
    theta = 1.0 / base ** (torch.arange(0, d, 2, device=x.device, dtype=x.dtype) / d)
    angles = position_ids[..., None].to(x.dtype) * theta
    angles = torch.cat((angles, angles), dim=-1)[:, None]
    return x * angles.cos() + torch.cat((-x[..., d // 2:], x[..., :d // 2]), -1) * angles.sin()


def rope_rotating_the_callers_tensor_in_place(x, position_ids, base=10000.0):
    x.copy_(apply_rope(x, position_ids, base))
    return x


def layer_norm_bias_only_with_a_weight(x, weight=None, bias=None, eps=1e-5):
    if weight is None or bias is None:
        return layer_norm(x, None, None, eps) * (1 if weight is None else weight)
    return layer_norm(x, weight, bias, eps)


def layer_norm_always_in_float32(x, weight=None, bias=None, eps=1e-5):
    h = x.float()
    h = (h - h.mean(-1, keepdim=True)) * torch.rsqrt(h.var(-1, keepdim=True, unbiased=False) + eps)
    if weight is not None:
        h = h * weight.float()
    if bias is not None:
        h = h + bias.float()
    return h.to(x.dtype)


def layer_norm_centering_the_callers_tensor_in_place(x, weight=None, bias=None, eps=1e-5):
    x -= x.mean(-1, keepdim=True)
    return layer_norm(x, weight, bias, eps)


def rms_norm_weight_before_casting_back(x, weight=None, eps=1e-6):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * weight if weight is not None else h).to(x.dtype)


def rms_norm_in_the_input_dtype(x, weight=None, eps=1e-6):
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return h * weight if weight is not None else h


def rms_norm_with_layer_norms_default_eps(x, weight=None, eps=1e-5):
    return rms_norm(x, weight, eps)


def swiglu_without_biases(weights, x, activation):
    if activation == "swiglu":
        weights = {k: v for k, v in weights.items() if not k.endswith(".bias")}
    return _feed_forward(weights, x, activation)


def feed_forward_relu_for_every_other_activation(weights, x, activation):
    return _feed_forward(weights, x, activation if activation in ("gelu", "swiglu") else "relu")


def encoder_with_the_default_eps(weights, x, attention_mask=None, attn_mask=None, norm_first=True, *, n_heads,
                                 activation="relu", eps=1e-5):
    return _layer(weights, x, None, (attention_mask, attn_mask, None), norm_first, n_heads, activation, 1e-5)


def encoder_gelu_or_relu_only(weights, x, attention_mask=None, attn_mask=None, norm_first=True, *, n_heads,
                              activation="relu", eps=1e-5):
    return _layer(weights, x, None, (attention_mask, attn_mask, None), norm_first, n_heads,
                  "gelu" if activation.startswith("gelu") else "relu", eps)


def encoder_float_attn_mask_as_bool(weights, x, attention_mask=None, attn_mask=None, norm_first=True, *, n_heads,
                                    activation="relu", eps=1e-5):
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask > float("-inf")
    return _layer(weights, x, None, (attention_mask, attn_mask, None), norm_first, n_heads, activation, eps)


def decoder_with_the_default_eps(weights, x, memory, attention_mask=None, memory_attention_mask=None,
                                 is_causal=True, norm_first=True, *, n_heads, activation="relu", eps=1e-5):
    return _layer(weights, x, memory, (attention_mask, None, memory_attention_mask), norm_first, n_heads, activation,
                  1e-5, causal=is_causal)


def decoder_causal_whenever_padded(weights, x, memory, attention_mask=None, memory_attention_mask=None,
                                   is_causal=True, norm_first=True, *, n_heads, activation="relu", eps=1e-5):
    return _layer(weights, x, memory, (attention_mask, None, memory_attention_mask), norm_first, n_heads, activation,
                  eps, causal=is_causal or attention_mask is not None)


def block_with_rms_norms_default_eps(weights, hidden_states, position_ids, attention_mask=None, past_key=None,
                                     past_value=None, attn_implementation="eager", *, config):
    return _block(weights, hidden_states, position_ids, attention_mask, past_key, past_value, attn_implementation,
                  config={**config, "norm_eps": 1e-6 if config["norm_type"] == "rmsnorm" else 1e-5})


def block_heads_of_d_model_over_n_heads(weights, hidden_states, position_ids, attention_mask=None, past_key=None,
                                        past_value=None, attn_implementation="eager", *, config):
    d_head = hidden_states.shape[-1] // config["num_attention_heads"]
    heads = {**config, "num_attention_heads": weights["self_attn.q_proj.weight"].shape[0] // d_head,
             "num_key_value_heads": weights["self_attn.k_proj.weight"].shape[0] // d_head}
    return _block(weights, hidden_states, position_ids, attention_mask, past_key, past_value, attn_implementation,
                  config=heads)


def block_cache_masked_by_the_new_positions_only(weights, hidden_states, position_ids, attention_mask=None,
                                                 past_key=None, past_value=None, attn_implementation="eager", *,
                                                 config):
    if past_key is not None and attention_mask is not None:
        attention_mask = torch.cat([torch.ones_like(attention_mask[:, :past_key.shape[2]]),
                                    attention_mask[:, past_key.shape[2]:]], dim=1)
    return _block(weights, hidden_states, position_ids, attention_mask, past_key, past_value, attn_implementation,
                  config=config)


def count_biases_of_both_kinds_when_attention_has_them(config):
    both = config["attention_bias"] or config["mlp_bias"]
    return _count({**config, "attention_bias": both, "mlp_bias": both})


def count_as_a_float(config):
    return _count(config) * config["num_key_value_heads"] / config["num_key_value_heads"]


def flops_with_the_bias_additions(config, seq_len):
    biases = 0
    if config["attention_bias"]:
        biases += (2 * config["num_attention_heads"] + 2 * config["num_key_value_heads"]) * config["head_dim"]
    if config["mlp_bias"]:
        biases += 2 * config["intermediate_size"] + config["hidden_size"]
    return _flops(config, seq_len) + config["num_hidden_layers"] * biases


def flops_as_a_float(config, seq_len):
    return _flops(config, seq_len) * 1.0


MUTANTS = {
    "sinusoidal_positions": [pe_sin_and_cos_swapped, pe_sin_then_cos_halves, pe_exponent_i_over_d, pe_cached_by_width,
                             pe_returning_a_shared_table],
    "embed": [embed_scales_positions_too, embed_ignores_position_ids, embed_scaling_only_with_a_position_table, embed_in_float32,
              embed_scaling_the_callers_table_in_place],
    "apply_rope": [rope_rotates_adjacent_pairs, rope_rotation_the_wrong_way, rope_exponent_j_over_d,
                   rope_ignores_position_ids, rope_angles_in_the_input_dtype, rope_rotating_the_callers_tensor_in_place],
    "layer_norm": [layer_norm_over_the_first_axis, layer_norm_unbiased_variance, layer_norm_eps_outside_the_sqrt,
                   layer_norm_bias_only_with_a_weight, layer_norm_always_in_float32,
                   layer_norm_centering_the_callers_tensor_in_place],
    "rms_norm": [rms_norm_subtracts_the_mean, rms_norm_eps_outside_the_sqrt, rms_norm_over_the_sequence_axis,
                 rms_norm_weight_before_casting_back, rms_norm_in_the_input_dtype, rms_norm_with_layer_norms_default_eps],
    "feed_forward": [swiglu_activation_on_the_up_branch, swiglu_with_a_sigmoid_gate, gelu_always_exact,
                     gelu_always_tanh, swiglu_without_biases, feed_forward_relu_for_every_other_activation],
    "encoder_layer": [encoder_post_norm_when_pre_norm_asked, encoder_pre_norm_always,
                      encoder_missing_attention_residual, encoder_ignores_padding, encoder_with_the_default_eps,
                      encoder_gelu_or_relu_only, encoder_float_attn_mask_as_bool],
    "decoder_layer": [decoder_cross_attention_reads_decoder_states, decoder_not_causal,
                      decoder_post_norm_when_pre_norm_asked, decoder_norms_in_the_wrong_order,
                      decoder_with_the_default_eps, decoder_causal_whenever_padded],
    "decoder_block": [block_rope_applied_to_values_too, block_rope_on_queries_only,
                      block_rope_rotating_the_wrong_halves, block_post_norm_where_pre_norm_is_asked,
                      block_missing_attention_residual, block_ignores_the_kv_cache, block_with_rms_norms_default_eps,
                      block_heads_of_d_model_over_n_heads, block_cache_masked_by_the_new_positions_only],
    "count_parameters": [count_tied_output_layer_twice, count_kv_with_query_heads, count_layernorm_without_bias,
                         count_swiglu_with_two_matrices, count_biases_of_both_kinds_when_attention_has_them,
                         count_as_a_float],
    "flops_per_token": [flops_counts_multiply_adds_once, flops_without_attention_products, flops_kaplan_causal_half,
                        flops_without_the_output_layer, flops_with_the_bias_additions, flops_as_a_float],
}
