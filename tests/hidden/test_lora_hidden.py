"""Chapter 8 graded tests (hidden: grading only, not in the student handout). More inputs for the
contracts the public tests check."""

import copy

import pytest
import torch

from grading.expect import assert_close
from tests.test_lora import (ACTIVATION_ARCHITECTURES, ADAPTER, ALL_LINEAR, QUANT_CASES,  # noqa: F401
                             activation_architecture, activations_per_sequence, adapted_memory_model, bnb_linear4bit,
                             bnb_nf4_code, bnb_quantize, check_dict_close, check_layer_against_peft, injection_case,
                             input_ids, layer_case, measured_memory, memo, memory_model, memory_sizes, nearest,
                             peft_layer, peft_layer_run, peft_lora_layers, peft_run, peft_saved, run_student_layer,
                             weights)


# -- 8.1-8.2 ----------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.1")
@pytest.mark.parametrize("in_features, out_features, r, seed", [(3, 50, 16, 4), (100, 1, 2, 0)])
def test_hidden_init_lora_weights_more_shapes(student, in_features, out_features, r, seed):
    lora_A, lora_B = student.init_lora_weights(in_features, out_features, r, seed)
    layer = peft_layer(torch.nn.Linear(in_features, out_features), r, r)
    torch.manual_seed(seed)
    layer.reset_lora_parameters("default", init_lora_weights=True)
    assert_close(lora_A, layer.lora_A["default"].weight.detach(), what=f"lora_A ({r}, {in_features})")
    assert_close(lora_B, torch.zeros(out_features, r), what=f"lora_B ({out_features}, {r})")


@pytest.mark.exercise("8.2")
@pytest.mark.parametrize("alpha, r, use_rslora", [(0.5, 3, False), (7.5, 9, True), (128, 128, False)])
def test_hidden_lora_scaling_more_settings(student, alpha, r, use_rslora):
    got = student.lora_scaling(alpha, r, use_rslora)
    assert got == pytest.approx(peft_layer(torch.nn.Linear(4, 4), r, alpha, use_rslora=use_rslora).scaling["default"])


# -- 8.3 ----------------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.3")
@pytest.mark.parametrize("seed, in_features, out_features, r, conv1d, use_rslora", [
    (10, 5, 3, 1, False, False), (11, 20, 8, 6, True, True), (12, 8, 30, 2, False, True)])
def test_hidden_lora_linear_more_layers(student, seed, in_features, out_features, r, conv1d, use_rslora):
    case = layer_case(seed, in_features, out_features, r, conv1d=conv1d)
    got = run_student_layer(student, case, 2 * r + 1, conv1d=conv1d, use_rslora=use_rslora)
    check_layer_against_peft(got, peft_layer_run(case, 2 * r + 1, conv1d=conv1d, use_rslora=use_rslora),
                             f"LoRALinear ({in_features} -> {out_features}, r={r}, conv1d={conv1d})")


@pytest.mark.exercise("8.3")
def test_hidden_lora_linear_of_a_single_vector(student):
    case = layer_case(13)
    case |= {"x": case["x"][0, 0], "grad_output": case["grad_output"][0, 0]}
    check_layer_against_peft(run_student_layer(student, case, 4), peft_layer_run(case, 4),
                             "LoRALinear of one input vector (in_features,)")


# -- 8.4-8.5 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.4")
@pytest.mark.parametrize("targets", [["c_attn"], r"transformer\.h\.\d+\.attn\.c_(attn|proj)", ["attn.c_proj", "mlp.c_fc"],
                                     r".*c_.*"], ids=str)
def test_hidden_target_matches_gpt2_names(student, targets):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    from tests.test_lora import tiny_gpt2

    config = LoraConfig(target_modules=targets)
    for name, _ in memo("gpt2 names", lambda: list(tiny_gpt2().named_modules())):
        assert student.target_matches(name, targets) is bool(check_target_module_exists(config, name)), (
            f"target_matches({name!r}, {targets!r})")


@pytest.mark.exercise("8.5")
@pytest.mark.parametrize("family, targets, r, alpha", [("llama", ["lm_head", "o_proj"], 2, 3),
                                                       ("course", r".*layers\.1\..*_proj", 4, 4)])
def test_hidden_inject_lora_more_targets(student, family, targets, r, alpha):
    model, peft, adapters = injection_case(family, targets, r, alpha, seed=3)
    ids = input_ids(11)
    got = student.lora_injection(copy.deepcopy(model), targets, r, alpha, lora_weights=adapters, input_ids=ids)
    assert sorted(got["wrapped"]) == sorted(peft_lora_layers(peft))
    assert (got["n_trainable"], got["n_total"]) == peft.get_nb_trainable_parameters()
    loss, logits, grads = peft_run(peft, ids)
    assert_close(got["logits"], logits, what="logits", rtol=1e-5, atol=1e-5)
    check_dict_close(got["grads"], grads, "gradients", "the adapters' gradients are peft's", rtol=1e-4, atol=1e-6)


# -- 8.6-8.8 -----------------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.6")
@pytest.mark.parametrize("dtype, fan_in_fan_out", [(torch.float16, False), (torch.bfloat16, True)])
def test_hidden_lora_delta_weight_in_16_bits(student, dtype, fan_in_fan_out):
    from transformers.pytorch_utils import Conv1D

    layer = peft_layer(Conv1D(9, 14) if fan_in_fan_out else torch.nn.Linear(14, 9), 3, 7, fan_in_fan_out=fan_in_fan_out)
    gen = torch.Generator().manual_seed(21)
    layer.lora_A["default"].weight.data = torch.randn(3, 14, generator=gen).to(dtype)
    layer.lora_B["default"].weight.data = torch.randn(9, 3, generator=gen).to(dtype)
    got = student.lora_delta_weight(layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach(),
                                    layer.scaling["default"], fan_in_fan_out)
    assert_close(got, layer.get_delta_weight("default"), what=f"lora_delta_weight in {dtype}")


@pytest.mark.exercise("8.7")
def test_hidden_adapter_state_dict_of_the_course_model(student):
    from peft import get_peft_model_state_dict

    model, peft, adapters = injection_case("course", ["q_proj", "down_proj"], 2, 2, seed=4)
    got = student.adapter_weights(copy.deepcopy(model), adapters, 2, 2)
    expected = get_peft_model_state_dict(peft)
    assert list(got["state_dict"]) == list(expected)
    check_dict_close(got["state_dict"], expected, "adapter_state_dict of the course model", "")


@pytest.mark.exercise("8.8")
def test_hidden_load_adapter_state_dict_into_the_course_model(student, tmp_path):
    model, peft, adapters = injection_case("course", ["v_proj", "up_proj"], 3, 6, seed=5)
    got = student.loaded_adapter(copy.deepcopy(model), list(adapters), peft_saved(peft, tmp_path), 3, 6)
    for name, pair in adapters.items():
        assert_close(got["lora_A"][name], pair["lora_A"], what=f"{name}.lora_A")
        assert_close(got["lora_B"][name], pair["lora_B"], what=f"{name}.lora_B")


# -- 8.9-8.14 ------------------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.9")
def test_hidden_nf4_code_has_eight_positive_and_seven_negative_values(student):
    code = student.nf4_code()
    assert int((code > 0).sum()) == 8 and int((code < 0).sum()) == 7
    assert_close(code, bnb_nf4_code(), what="nf4_code", rtol=0, atol=2.4e-7)


@pytest.mark.exercise("8.10")
@pytest.mark.parametrize("seed, shape, dtype, blocksize", [(20, (33, 70), torch.bfloat16, 256), (21, (300,), torch.float32, 64),
                                                           (22, (2, 3, 64), torch.float16, 64)])
def test_hidden_quantize_blockwise_more_shapes(student, seed, shape, dtype, blocksize):
    x = weights(seed, shape, dtype, outlier=0)
    _, state, indices = bnb_quantize(x, blocksize)
    got_indices, got_absmax = student.quantize_blockwise(x, bnb_nf4_code(), blocksize)
    assert_close(got_absmax, state.absmax, what="absmax")
    assert_close(got_indices, indices, what="indices")


@pytest.mark.exercise("8.11")
@pytest.mark.parametrize("seed, shape, blocksize", [(23, (2, 3, 64), 64), (24, (256,), 32)])
def test_hidden_dequantize_blockwise_more_shapes(student, seed, shape, blocksize):
    import bitsandbytes.functional as bnbf

    packed, state, indices = bnb_quantize(weights(seed, shape), blocksize)
    got = student.dequantize_blockwise(indices, state.absmax, state.code, blocksize, shape)
    expected = bnbf.dequantize_4bit(packed[:, None], state).reshape(shape)   # (1, n) for a 1-D shape on a CPU
    assert_close(got, expected, what="dequantize_blockwise")


@pytest.mark.exercise("8.12")
def test_hidden_pack_nibbles_of_random_indices(student):
    indices = torch.randint(0, 16, (1000,), generator=torch.Generator().manual_seed(25)).to(torch.uint8)
    assert_close(student.pack_nibbles(indices), indices[0::2] * 16 + indices[1::2], what="pack_nibbles of 1000 indices")


@pytest.mark.exercise("8.13")
@pytest.mark.parametrize("n", [999, 1000])
def test_hidden_unpack_nibbles_of_random_bytes(student, n):
    packed = torch.randint(0, 256, (500,), generator=torch.Generator().manual_seed(26)).to(torch.uint8)
    expected = torch.stack([packed // 16, packed % 16], dim=1).flatten()[:n]
    assert_close(student.unpack_nibbles(packed, n), expected, what=f"unpack_nibbles of 500 bytes into {n} indices")


@pytest.mark.exercise("8.14")
def test_hidden_double_quantize_with_a_smaller_second_block(student):
    from course_lib.lora import dynamic_code

    absmax = weights(27, (700,)).abs() + 0.01
    code = dynamic_code()
    absmax_q, absmax2, offset = student.double_quantize(absmax, code, 128)
    assert_close(offset, absmax.mean(), what="offset")
    centred = torch.nn.functional.pad(absmax - absmax.mean(), (0, 68)).view(6, 128)
    assert_close(absmax2, centred.abs().amax(dim=1), what="second-level absmax in blocks of 128")
    scaled = (centred / centred.abs().amax(dim=1, keepdim=True)).flatten()[:700]
    assert_close(absmax_q, nearest(scaled, code), what="8-bit scales")


# -- 8.15-8.16 ------------------------------------------------------------------------------------------------------------------
@pytest.mark.exercise("8.15")
def test_hidden_nf4_linear_of_a_bfloat16_vector(student):
    w, b = weights(28, (40, 64)), weights(29, (40,))
    layer, buffers = bnb_linear4bit(w, b, torch.float32, True)
    x = torch.randn(64, generator=torch.Generator().manual_seed(30)).to(torch.bfloat16)
    x_ref = x.clone().requires_grad_(True)
    expected = layer(x_ref)
    got = student.nf4_linear_outputs(buffers, 64, 40, x, bias=b, compute_dtype="float32")
    assert_close(got["output"], expected.detach(), what="NF4Linear of one bfloat16 vector, compute float32")


@pytest.mark.exercise("8.16")
@pytest.mark.parametrize("method, dtype, targets, r", [("full", torch.bfloat16, ["q_proj"], 1),
                                                      ("lora", torch.float32, ALL_LINEAR, 16)], ids=str)
def test_hidden_training_memory_more_settings(student, method, dtype, targets, r, tmp_path):
    model = memory_model(dtype)
    shapes, other = memory_sizes(model, targets)
    got = student.training_memory(shapes, other, method, r=r, param_bytes=torch.finfo(dtype).bits // 8)
    measured = measured_memory(adapted_memory_model(model, method, dtype, True, targets, r, tmp_path), input_ids(12))
    assert {k: got[k] for k in measured} == measured


@pytest.mark.exercise("8.17")
@pytest.mark.parametrize("name, method, attn, seq_len, r", [("one kv head, wide heads", "lora", "sdpa", 12, 16),
                                                            ("grouped queries", "qlora", "eager", 20, 1)], ids=str)
def test_hidden_activation_memory_more_settings(student, name, method, attn, seq_len, r, tmp_path):
    measured = activations_per_sequence(ACTIVATION_ARCHITECTURES[name], method, attn, seq_len, r, tmp_path)
    got = student.activation_memory(activation_architecture(ACTIVATION_ARCHITECTURES[name]), 2, seq_len, method, r=r,
                                    attn_implementation=attn)
    assert got == 2 * measured
