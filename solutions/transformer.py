"""Reference solutions for Chapter 3 (course_lib/transformer.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib import attention
from course_lib.transformer import attend, linear, sub_weights


def sinusoidal_positions(seq_len: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    positions = torch.arange(seq_len, dtype=torch.float64)[:, None]                # (seq_len, 1)
    inv_freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d_model / 2,)
    angles = positions * inv_freq                                                  # (seq_len, d_model / 2)
    pe = torch.empty(seq_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe.float()


def embed(weights: dict[str, torch.Tensor], input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
          scale: float = 1.0) -> torch.Tensor:
    x = F.embedding(input_ids, weights["embed_tokens.weight"])                     # (batch, seq, d_model)
    if scale != 1.0:
        x = x * scale
    positions = weights.get("embed_positions.weight")
    if positions is not None:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        x = x + F.embedding(position_ids, positions)
    return x


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, position_ids: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    d_head = x.shape[-1]
    theta = 1.0 / base ** (torch.arange(0, d_head, 2, device=x.device, dtype=torch.float32) / d_head)  # (d/2,)
    angles = position_ids[..., None].float() * theta                               # (batch, seq, d/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]                          # (batch, 1, seq, d)
    return x * angles.cos().to(x.dtype) + _rotate_half(x) * angles.sin().to(x.dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    h = x.to(torch.promote_types(x.dtype, torch.float32))
    mean = h.mean(-1, keepdim=True)
    var = h.var(-1, keepdim=True, unbiased=False)
    h = (h - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        h = h * weight
    if bias is not None:
        h = h + bias
    return h.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    h = x.to(torch.promote_types(x.dtype, torch.float32))
    h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return h * weight if weight is not None else h


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh")}


def feed_forward(weights: dict[str, torch.Tensor], x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "swiglu":
        return linear(weights, "down_proj", F.silu(linear(weights, "gate_proj", x)) * linear(weights, "up_proj", x))
    return linear(weights, "fc_out", _ACTIVATIONS[activation](linear(weights, "fc_in", x)))


def encoder_layer(weights: dict[str, torch.Tensor], x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  attn_mask: torch.Tensor | None = None, norm_first: bool = True, *, n_heads: int,
                  activation: str = "relu", eps: float = 1e-5) -> torch.Tensor:
    def norm(name, h):
        return layer_norm(h, weights[f"{name}.weight"], weights.get(f"{name}.bias"), eps)

    def self_attention(h):
        return attention.multi_head_attention(sub_weights(weights, "self_attn"), h, attention_mask=attention_mask,
                                              attn_mask=attn_mask, n_heads=n_heads)

    def mlp(h):
        return feed_forward(sub_weights(weights, "mlp"), h, activation)

    if norm_first:
        x = x + self_attention(norm("norm1", x))
        return x + mlp(norm("norm2", x))
    x = norm("norm1", x + self_attention(x))
    return norm("norm2", x + mlp(x))


def decoder_layer(weights: dict[str, torch.Tensor], x: torch.Tensor, memory: torch.Tensor,
                  attention_mask: torch.Tensor | None = None, memory_attention_mask: torch.Tensor | None = None,
                  is_causal: bool = True, norm_first: bool = True, *, n_heads: int, activation: str = "relu",
                  eps: float = 1e-5) -> torch.Tensor:
    def norm(name, h):
        return layer_norm(h, weights[f"{name}.weight"], weights.get(f"{name}.bias"), eps)

    def self_attention(h):
        return attention.multi_head_attention(sub_weights(weights, "self_attn"), h, attention_mask=attention_mask,
                                              is_causal=is_causal, n_heads=n_heads)

    def cross_attention(h):  # queries from the decoder, keys and values from the encoder's output
        return attention.multi_head_attention(sub_weights(weights, "cross_attn"), h, memory,
                                              attention_mask=memory_attention_mask, n_heads=n_heads)

    def mlp(h):
        return feed_forward(sub_weights(weights, "mlp"), h, activation)

    if norm_first:
        x = x + self_attention(norm("norm1", x))
        x = x + cross_attention(norm("norm2", x))
        return x + mlp(norm("norm3", x))
    x = norm("norm1", x + self_attention(x))
    x = norm("norm2", x + cross_attention(x))
    return norm("norm3", x + mlp(x))


def _split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    batch, seq, features = x.shape                                                 # (batch, seq, heads * d_head)
    return x.view(batch, seq, n_heads, features // n_heads).transpose(1, 2)        # (batch, heads, seq, d_head)


def decoder_block(weights: dict[str, torch.Tensor], hidden_states: torch.Tensor, position_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None = None, past_key: torch.Tensor | None = None,
                  past_value: torch.Tensor | None = None, attn_implementation: str = "eager", *,
                  config: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    def norm(name, h):
        if config["norm_type"] == "rmsnorm":
            return rms_norm(h, weights[f"{name}.weight"], config["norm_eps"])
        return layer_norm(h, weights[f"{name}.weight"], weights.get(f"{name}.bias"), config["norm_eps"])

    batch, seq, _ = hidden_states.shape
    h = norm("input_layernorm", hidden_states)
    q = _split_heads(linear(weights, "self_attn.q_proj", h), config["num_attention_heads"])
    k = _split_heads(linear(weights, "self_attn.k_proj", h), config["num_key_value_heads"])
    v = _split_heads(linear(weights, "self_attn.v_proj", h), config["num_key_value_heads"])
    if config["position_embedding_type"] == "rope":  # queries and keys carry positions; values do not
        q = apply_rope(q, position_ids, config["rope_theta"])
        k = apply_rope(k, position_ids, config["rope_theta"])
    keys, values = k, v
    if past_key is not None:
        keys, values = torch.cat((past_key, k), dim=2), torch.cat((past_value, v), dim=2)
    out = attend(q, keys, values, attention_mask, attn_implementation)             # (batch, n_heads, seq, d_head)
    out = out.transpose(1, 2).reshape(batch, seq, -1)
    hidden_states = hidden_states + linear(weights, "self_attn.o_proj", out)
    hidden_states = hidden_states + feed_forward(sub_weights(weights, "mlp"),
                                                  norm("post_attention_layernorm", hidden_states), config["hidden_act"])
    return hidden_states, k, v


def _matmul_weights_per_layer(config: dict) -> int:
    d, d_ff = config["hidden_size"], config["intermediate_size"]
    q_and_o = 2 * d * config["num_attention_heads"] * config["head_dim"]
    k_and_v = 2 * d * config["num_key_value_heads"] * config["head_dim"]
    mlp = (3 if config["hidden_act"] == "swiglu" else 2) * d * d_ff
    return q_and_o + k_and_v + mlp


def count_parameters(config: dict) -> int:
    d, d_ff, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    n_heads, n_kv, d_head = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    per_layer = _matmul_weights_per_layer(config)
    if config["attention_bias"]:
        per_layer += (n_heads + 2 * n_kv) * d_head + d
    if config["mlp_bias"]:
        per_layer += (2 * d_ff if config["hidden_act"] == "swiglu" else d_ff) + d
    norm = 2 * d if config["norm_type"] == "layernorm" else d
    per_layer += 2 * norm
    total = vocab * d + config["num_hidden_layers"] * per_layer + norm
    if config["position_embedding_type"] == "learned":
        total += config["max_position_embeddings"] * d
    if not config["tie_word_embeddings"]:
        total += vocab * d
    return total


def flops_per_token(config: dict, seq_len: int) -> int:
    n_layers = config["num_hidden_layers"]
    matmul_weights = n_layers * _matmul_weights_per_layer(config) + config["vocab_size"] * config["hidden_size"]
    attention_products = 4 * n_layers * seq_len * config["num_attention_heads"] * config["head_dim"]
    return 2 * matmul_weights + attention_products
