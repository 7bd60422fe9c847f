"""Chapter 3 graded tests (hidden: grading only, not in the student handout): other seeds, shapes,
dtypes and edge cases against the same outside references as the public tests."""

import math

import pytest
import torch
import torch.nn.functional as F

from grading.expect import assert_close
from tests.test_attention import padding, randn
from tests.test_transformer import (F64, block_config, gpt2_block, hf_rope, llama_config, llama_layer, only_real,
                                    params, randomize, run_gpt2_block, run_llama_layer, sinusoids, tiny_gpt2,
                                    tiny_llama, torch_padding)


# -- 3.1 ------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("3.1")
@pytest.mark.parametrize("seq_len, d_model, base", [(512, 64, 10000.0), (7, 2, 10000.0), (30, 12, 2.0)])
def test_hidden_sinusoidal_positions_long_narrow_and_odd_bases(student, seq_len, d_model, base):
    assert_close(student.sinusoidal_positions(seq_len, d_model, base), sinusoids(seq_len, d_model, base).float(),
                 what=f"sinusoidal_positions({seq_len}, {d_model}, base={base})", atol=seq_len * 2**-23 + 1e-6, rtol=0)


# -- 3.2 ------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("3.2")
def test_hidden_embed_decoding_step_float64_with_offset_positions(student, device):
    tokens, table = randn((9, 6), device, F64, seed=100), randn((20, 6), device, F64, seed=101)
    input_ids = torch.tensor([[4], [8]], device=device)
    position_ids = torch.tensor([[13], [2]], device=device)
    expected = tokens[input_ids] * 2.5 + table[position_ids]
    assert_close(student.embed({"embed_tokens.weight": tokens, "embed_positions.weight": table}, input_ids,
                               position_ids, scale=2.5), expected, what="embed of one token per row at positions 13, 2")


# -- 3.3 ------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("3.3")
@pytest.mark.parametrize("d_head, base, offset", [(2, 10000.0, 0), (32, 1e6, 900), (12, 100.0, 37)])
def test_hidden_apply_rope_float64_far_positions_and_bases(student, device, d_head, base, offset):
    x = randn((2, 3, 4, d_head), device, F64, seed=102 + d_head)
    position_ids = (torch.arange(4, device=device) + offset)[None].expand(2, 4).clone()
    position_ids[1] += 5
    # Angles in float32 round by ~position * 2^-24 (Llama's convention; float64 angles are as good).
    assert_close(student.apply_rope(x, position_ids, base), hf_rope(x, position_ids, base),
                 what=f"apply_rope(d_head={d_head}, base={base:g}, positions from {offset})",
                 atol=(offset + 10) * 2**-21 + 1e-6, rtol=0)


# -- 3.4 and 3.5 ------------------------------------------------------------------------------------------------
@pytest.mark.exercise("3.4")
def test_hidden_layer_norm_large_mean_needs_a_stable_variance(student, device):
    x = randn((4, 256), device, seed=104) + 1000.0  # E[x^2] - E[x]^2 in float32 loses the variance here
    expected = F.layer_norm(x.double(), (256,)).float()
    assert_close(student.layer_norm(x), expected, what="layer_norm of vectors with mean 1000 and std 1",
                 atol=2e-3, rtol=0, hint="Subtract the mean before squaring (x.var(unbiased=False)).")


@pytest.mark.exercise("3.4")
def test_hidden_layer_norm_one_dim_and_constant_vectors(student, device):
    x = randn((5,), device, F64, seed=105)
    assert_close(student.layer_norm(x, eps=1e-5), F.layer_norm(x, (5,), eps=1e-5), what="layer_norm of a 1-D vector")
    constant = torch.full((2, 4), 3.0, device=device)
    assert_close(student.layer_norm(constant, bias=torch.arange(4.0, device=device)), torch.arange(4.0, device=device)
                 .expand(2, 4), what="layer_norm of a constant vector (variance 0: eps keeps it finite)")


@pytest.mark.exercise("3.5")
def test_hidden_rms_norm_float16_and_one_dim(student, device):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(16, eps=1e-5).to(device)
    with torch.no_grad():
        norm.weight.copy_(randn((16,), device, seed=106) * 0.5 + 1)
    norm = norm.half()
    x = (randn((3, 16), device, seed=107) * 20).half()
    assert_close(student.rms_norm(x, norm.weight.detach(), 1e-5), norm(x).detach(), what="rms_norm in float16")
    v = randn((7,), device, F64, seed=108)
    assert_close(student.rms_norm(v, eps=1e-6), F.rms_norm(v, (7,), eps=1e-6), what="rms_norm of a 1-D vector")


# -- 3.6 ---------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("3.6")
def test_hidden_feed_forward_swiglu_with_biases_and_relu_without(student, device):
    d, d_ff = 6, 10
    w = {name: randn(shape, device, F64, seed=110 + i) * 0.4 for i, (name, shape) in enumerate([
        ("gate_proj.weight", (d_ff, d)), ("gate_proj.bias", (d_ff,)), ("up_proj.weight", (d_ff, d)),
        ("up_proj.bias", (d_ff,)), ("down_proj.weight", (d, d_ff)), ("down_proj.bias", (d,))])}
    x = randn((4, d), device, F64, seed=117, std=2.0)

    def lin(name, h):
        return h @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    expected = lin("down_proj", F.silu(lin("gate_proj", x)) * lin("up_proj", x))
    assert_close(student.feed_forward(w, x, "swiglu"), expected, what="feed_forward(swiglu) with biases")
    relu = {"fc_in.weight": w["gate_proj.weight"], "fc_out.weight": w["down_proj.weight"]}
    assert_close(student.feed_forward(relu, x, "relu"), F.relu(x @ relu["fc_in.weight"].T) @ relu["fc_out.weight"].T,
                 what="feed_forward(relu) without biases")


# -- 3.7 and 3.8 ---------------------------------------------------------------------------------------------------
def torch_layer(kind, d_model, n_heads, d_ff, norm_first, activation, bias, device, seed):
    cls = torch.nn.TransformerEncoderLayer if kind == "encoder" else torch.nn.TransformerDecoderLayer
    torch.manual_seed(seed)
    layer = cls(d_model, n_heads, d_ff, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first,
                bias=bias)
    return randomize(layer, seed).to(device)


@pytest.mark.exercise("3.7")
@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_norm", "post_norm"])
def test_hidden_encoder_layer_without_biases_one_head_and_one_token(student, device, norm_first):
    from course_lib.transformer import torch_encoder_layer_weights

    layer = torch_layer("encoder", 10, 1, 20, norm_first, "gelu", False, device, seed=120)
    for shape in [(1, 1, 10), (3, 4, 10)]:
        x = randn(shape, device, F64, seed=121)
        assert_close(student.encoder_layer(torch_encoder_layer_weights(layer), x, norm_first=norm_first, n_heads=1,
                                           activation="gelu"), layer(x).detach(),
                     what=f"encoder_layer without biases (LayerNorms without bias too), x {shape}")


@pytest.mark.exercise("3.7")
def test_hidden_encoder_layer_float_attn_mask_and_left_padding(student, device):
    from course_lib.transformer import torch_encoder_layer_weights

    layer = torch_layer("encoder", 12, 3, 16, False, "relu", True, device, seed=122)
    x = randn((2, 6, 12), device, F64, seed=123)
    float_mask = randn((6, 6), device, F64, seed=124)
    attention_mask = padding([6, 4], 6, device, left=True)
    float_padding = torch.zeros(2, 6, dtype=F64, device=device).masked_fill(torch_padding(attention_mask), -math.inf)
    expected = layer(x, src_mask=float_mask, src_key_padding_mask=float_padding).detach()
    out = student.encoder_layer(torch_encoder_layer_weights(layer), x, attention_mask, float_mask, norm_first=False,
                                n_heads=3)
    assert_close(only_real(out, attention_mask), only_real(expected, attention_mask),
                 what="post-norm encoder_layer with a float attn_mask and left padding")


@pytest.mark.exercise("3.8")
@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_norm", "post_norm"])
def test_hidden_decoder_layer_single_positions_no_bias_and_padding(student, device, norm_first):
    from course_lib.transformer import torch_decoder_layer_weights

    layer = torch_layer("decoder", 8, 2, 12, norm_first, "relu", False, device, seed=125)
    weights = torch_decoder_layer_weights(layer)
    x, memory = randn((2, 1, 8), device, F64, seed=126), randn((2, 1, 8), device, F64, seed=127)
    assert_close(student.decoder_layer(weights, x, memory, norm_first=norm_first, n_heads=2), layer(x, memory).detach(),
                 what="decoder_layer with one target and one source position")
    x, memory = randn((3, 5, 8), device, F64, seed=128), randn((3, 4, 8), device, F64, seed=129)
    memory_mask = padding([4, 1, 3], 4, device, left=True)
    causal = torch.ones(5, 5, dtype=torch.bool, device=device).triu(1)
    expected = layer(x, memory, tgt_mask=causal, memory_key_padding_mask=torch_padding(memory_mask)).detach()
    assert_close(student.decoder_layer(weights, x, memory, memory_attention_mask=memory_mask, norm_first=norm_first,
                                       n_heads=2), expected, what="decoder_layer with left-padded memory")


# -- 3.9 ------------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("3.9")
def test_hidden_decoder_block_wide_heads_bias_cache_and_padding(student, device):
    from transformers import DynamicCache

    config = llama_config(4, 2, d_model=24, d_ff=40, head_dim=10, theta=1000.0, attention_bias=True)
    layer = llama_layer(config, device, seed=130)
    x = randn((2, 6, 24), device, F64, seed=131)
    attention_mask = padding([6, 4], 6, device, left=True)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=config)
    run_llama_layer(layer, x[:, :4], position_ids[:, :4], attention_mask[:, :4], cache=cache)
    past_key, past_value = cache.layers[0].keys.clone(), cache.layers[0].values.clone()
    expected = run_llama_layer(layer, x[:, 4:], position_ids[:, 4:], attention_mask, cache=cache)
    for implementation in ("eager", "sdpa"):
        out, key, value = student.decoder_block(params(layer), x[:, 4:], position_ids[:, 4:], attention_mask, past_key,
                                                past_value, implementation, config=block_config(config))
        assert_close(out, expected, what=f"decoder_block (head_dim=10, biases, left padding, cache, {implementation})",
                     atol=1e-6, rtol=1e-6)
        assert_close(value, cache.layers[0].values[:, :, 4:], what="the new values")


@pytest.mark.exercise("3.9")
def test_hidden_decoder_block_gpt2_sdpa_one_token(student, device):
    from course_lib.language_model import gpt2_block_weights

    block, config = gpt2_block(device, d_model=16, n_heads=2, seed=132)
    x = randn((3, 1, 16), device, F64, seed=133)
    out, key, _ = student.decoder_block(gpt2_block_weights(block), x, torch.zeros(3, 1, dtype=torch.long,
                                                                                   device=device), None, None, None,
                                        "sdpa", config=block_config(config))
    assert_close(out, run_gpt2_block(block, x), what="GPT-2-style decoder_block on one token (sdpa)")
    assert key.shape == (3, 2, 1, 8), f"key shape {tuple(key.shape)}, expected (batch, n_kv_heads, seq, d_head)"


# -- 3.10 and 3.11 ------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("3.10")
@pytest.mark.parametrize("size, style", [("cpu", "llama"), ("cpu", "gpt2")])
def test_hidden_count_parameters_of_the_course_sizes_against_hugging_face(student, size, style):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    from course_lib.language_model import course_config_to_llama, course_lm_config

    config = course_lm_config(size, style)
    if style == "llama":
        model = LlamaForCausalLM(course_config_to_llama(config))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=config.vocab_size, n_positions=config.max_position_embeddings,
                                           n_embd=config.hidden_size, n_layer=config.num_hidden_layers,
                                           n_head=config.num_attention_heads, bos_token_id=0, eos_token_id=0))
    expected = sum(p.numel() for p in model.parameters())
    assert student.count_parameters(config.architecture()) == expected, f"count_parameters of the {size}/{style} model"


@pytest.mark.exercise("3.10")
def test_hidden_count_parameters_untied_gpt2_with_wide_mlp(student):
    from transformers import GPT2LMHeadModel

    config = tiny_gpt2(n_inner=72).config
    config.tie_word_embeddings = False
    untied = GPT2LMHeadModel(config)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert student.count_parameters(block_config(untied.config)) == sum(p.numel() for p in untied.parameters())


@pytest.mark.exercise("3.11")
@pytest.mark.parametrize("seq_len", [3, 33])
def test_hidden_flops_per_token_mqa_with_biases(student, seq_len):
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_llama(bias=True, n_kv_heads=1, head_dim=6)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, seq_len, dtype=torch.long))
    assert student.flops_per_token(block_config(model.config), seq_len) == counter.get_total_flops() // seq_len
    assert math.isclose(student.flops_per_token(block_config(model.config), seq_len),
                        counter.get_total_flops() / seq_len)
