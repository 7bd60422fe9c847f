"""Plausible wrong answers to Chapter 8's exercises. Each must fail at least one public graded test
(``pytest --against mutants``). They are kept out of the student handout.

Each variant changes one thing in an otherwise correct implementation (the helpers below are the
correct parts they share), so that the test that catches it catches that mistake. Variants of methods
(``LoRALinear.forward``, ``NF4Linear.forward``) and of functions that take a model are run by the
course's harnesses (``run_lora_linear``, ``run_lora_injection``, ...), as the entry points the tests
call run the real ones.
"""

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_PREFIX = "base_model.model."


def _entry_point(harness, wrong, name):
    """A stand-in for an entry point the tests call: the course's ``harness`` run on ``wrong``."""
    def entry_point(*args, **kwargs):
        return harness(wrong, *args, **kwargs)

    entry_point.__name__ = name
    return entry_point


# -- 8.1 init_lora_weights ------------------------------------------------------------------------------------
def _init(in_features, out_features, r, seed, *, a=math.sqrt(5), b_random=False, a_zero=False, global_rng=False):
    generator = None if seed is None or global_rng else torch.Generator().manual_seed(seed)
    lora_A = torch.zeros(r, in_features)
    if not a_zero:
        nn.init.kaiming_uniform_(lora_A, a=a, generator=generator)
    lora_B = torch.zeros(out_features, r)
    if b_random:
        nn.init.kaiming_uniform_(lora_B, a=math.sqrt(5), generator=generator)
    return lora_A, lora_B


def init_b_random(in_features, out_features, r, seed=None):
    return _init(in_features, out_features, r, seed, b_random=True)


def init_a_with_kaiming_default_gain(in_features, out_features, r, seed=None):
    return _init(in_features, out_features, r, seed, a=0.0)


def init_both_zero(in_features, out_features, r, seed=None):
    return _init(in_features, out_features, r, seed, a_zero=True)


def init_ignores_the_seed(in_features, out_features, r, seed=None):
    return _init(in_features, out_features, r, seed, global_rng=True)


def init_a_transposed(in_features, out_features, r, seed=None):
    lora_A, lora_B = _init(r, out_features, in_features, seed)
    return lora_A.T.contiguous(), torch.zeros(out_features, r)


# -- 8.2 lora_scaling ---------------------------------------------------------------------------------------------
def scaling_r_over_alpha(alpha, r, use_rslora=False):
    return r / math.sqrt(alpha) if use_rslora else r / alpha


def scaling_ignores_rslora(alpha, r, use_rslora=False):
    return alpha / r


def scaling_rslora_by_r_squared(alpha, r, use_rslora=False):
    return alpha / r ** 2 if use_rslora else alpha / r


def scaling_as_a_tensor(alpha, r, use_rslora=False):
    return torch.tensor(alpha / math.sqrt(r) if use_rslora else alpha / r)


# -- 8.3 LoRALinear.forward -----------------------------------------------------------------------------------------
def _forward(self, x, *, scale=True, dropout_everywhere=False, skip_when_merged=True, cast_back=True,
             any_shape=True):
    if dropout_everywhere:
        x = self.lora_dropout(x)
    result = self.base_layer(x)
    if self.merged and skip_when_merged:
        return result
    h = (x if dropout_everywhere else self.lora_dropout(x)).to(self.lora_A.weight.dtype)
    if any_shape:
        lora = self.lora_B(self.lora_A(h))
    else:                        # (batch, seq, in_features) flattened to rows and back: other shapes fail
        batch, seq, _ = h.shape
        lora = self.lora_B(self.lora_A(h.reshape(batch * seq, -1))).view(batch, seq, -1)
    out = result + (lora * self.scaling if scale else lora)
    return out.to(result.dtype) if cast_back else out


def lora_forward_without_scaling(self, x):
    return _forward(self, x, scale=False)


def lora_forward_dropout_on_the_base_too(self, x):
    return _forward(self, x, dropout_everywhere=True)


def lora_forward_adds_the_adapter_when_merged(self, x):
    return _forward(self, x, skip_when_merged=False)


def lora_forward_returns_the_adapter_dtype(self, x):
    return _forward(self, x, cast_back=False)


def lora_forward_for_batches_of_sequences_only(self, x):
    return _forward(self, x, any_shape=False)


def lora_forward_scales_the_base_too(self, x):
    result = self.base_layer(x)
    if self.merged:
        return result
    lora = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
    return ((result + lora) * self.scaling).to(result.dtype)


def lora_linear_driver(wrong_forward):
    """lora_linear_outputs with a LoRALinear whose forward is ``wrong_forward``."""
    from course_lib.lora import LoRALinear, run_lora_linear

    wrong = type(f"LoRALinear_{wrong_forward.__name__}", (LoRALinear,), {"forward": wrong_forward})
    return _entry_point(run_lora_linear, wrong, wrong_forward.__name__)


# -- 8.4 target_matches -----------------------------------------------------------------------------------------------
def _matches(name, target_modules, *, rule="suffix", regex="fullmatch"):
    if isinstance(target_modules, str):
        return getattr(re, regex)(target_modules, name) is not None
    if rule == "substring":
        return any(t in name for t in target_modules)
    if rule == "endswith":
        return any(name.endswith(t) for t in target_modules)
    return any(name == t or name.endswith("." + t) for t in target_modules)


def target_matches_substring(name, target_modules):
    return _matches(name, target_modules, rule="substring")


def target_matches_endswith_without_the_dot(name, target_modules):
    return _matches(name, target_modules, rule="endswith")


def target_matches_regex_search(name, target_modules):
    return _matches(name, target_modules, regex="search")


def target_matches_regex_prefix(name, target_modules):
    return _matches(name, target_modules, regex="match")


def target_matches_a_str_as_a_name(name, target_modules):
    return _matches(name, [target_modules] if isinstance(target_modules, str) else target_modules)


def target_matches_only_a_list_as_names(name, target_modules):
    if not isinstance(target_modules, list):        # a tuple of names is taken for a regular expression
        return re.fullmatch(target_modules, name) is not None
    return _matches(name, target_modules)


# -- 8.5 inject_lora -----------------------------------------------------------------------------------------------------
def _inject(model, target_modules, r, alpha, dropout, use_rslora, seed, *, freeze="all", conv1d=True, check=True,
            one_seed=False, match=None, pass_dropout=True, no_seed_as_zero=False, copy_model=False, copy_layers=False):
    import copy

    from transformers.pytorch_utils import Conv1D

    from course_lib.lora import LoRALinear, replace_module, target_matches

    match = match or target_matches
    if copy_model:               # the caller's model is left as it was; the adapted copy is returned
        model = copy.deepcopy(model)
    kinds = (nn.Linear, Conv1D) if conv1d else (nn.Linear,)
    found = [(n, m) for n, m in model.named_modules() if match(n, target_modules)]
    if check:
        if not found:
            raise ValueError(f"target_modules {target_modules!r} match no module of the model")
        for name, module in found:
            if not isinstance(module, kinds):
                raise ValueError(f"target {name}: cannot wrap {type(module).__name__}")
    found = [(n, m) for n, m in found if isinstance(m, kinds)]
    if freeze == "all":
        model.requires_grad_(False)
    for i, (name, module) in enumerate(found):
        layer_seed = None if seed is None else seed + (0 if one_seed else i)
        if seed is None and no_seed_as_zero:
            layer_seed = i
        base = copy.deepcopy(module) if copy_layers else module
        layer_dropout = dropout if pass_dropout else 0.0
        replace_module(model, name, LoRALinear(base, r, alpha, layer_dropout, use_rslora, layer_seed))
    if freeze == "weights":      # every weight frozen, every bias left as it was: trainable
        for pname, p in model.named_parameters():
            if "lora_" not in pname and not pname.endswith("bias"):
                p.requires_grad_(False)
    return model


def inject_leaves_the_biases_trainable(model, target_modules, r=8, alpha=8.0, dropout=0.0, use_rslora=False, seed=None):
    return _inject(model, target_modules, r, alpha, dropout, use_rslora, seed, freeze="weights")


def inject_freezes_nothing(model, target_modules, r=8, alpha=8.0, dropout=0.0, use_rslora=False, seed=None):
    return _inject(model, target_modules, r, alpha, dropout, use_rslora, seed, freeze="none")


def inject_skips_conv1d(model, target_modules, r=8, alpha=8.0, dropout=0.0, use_rslora=False, seed=None):
    return _inject(model, target_modules, r, alpha, dropout, use_rslora, seed, conv1d=False, check=False)


def inject_skips_what_it_cannot_wrap(model, target_modules, r=8, alpha=8.0, dropout=0.0, use_rslora=False, seed=None):
    return _inject(model, target_modules, r, alpha, dropout, use_rslora, seed, check=False)


def inject_with_one_seed_for_every_adapter(model, target_modules, r=8, alpha=8.0, dropout=0.0, use_rslora=False,
                                           seed=None):
    return _inject(model, target_modules, r, alpha, dropout, use_rslora, seed, one_seed=True)


def inject_matching_substrings(model, target_modules, r=8, alpha=8.0, dropout=0.0, use_rslora=False, seed=None):
    return _inject(model, target_modules, r, alpha, dropout, use_rslora, seed, match=target_matches_substring)


def inject_without_the_dropout(model, target_modules, r=8, alpha=8.0, dropout=0.0, use_rslora=False, seed=None):
    return _inject(model, target_modules, r, alpha, dropout, use_rslora, seed, pass_dropout=False)


def inject_without_a_seed_seeds_from_zero(model, target_modules, r=8, alpha=8.0, dropout=0.0, use_rslora=False,
                                          seed=None):
    return _inject(model, target_modules, r, alpha, dropout, use_rslora, seed, no_seed_as_zero=True)


def inject_into_a_copy(model, target_modules, r=8, alpha=8.0, dropout=0.0, use_rslora=False, seed=None):
    return _inject(model, target_modules, r, alpha, dropout, use_rslora, seed, copy_model=True)


def inject_wrapping_copies_of_the_layers(model, target_modules, r=8, alpha=8.0, dropout=0.0, use_rslora=False,
                                         seed=None):
    return _inject(model, target_modules, r, alpha, dropout, use_rslora, seed, copy_layers=True)


def injection_driver(wrong_inject):
    from course_lib.lora import run_lora_injection

    return _entry_point(run_lora_injection, wrong_inject, wrong_inject.__name__)


# -- 8.6 lora_delta_weight ------------------------------------------------------------------------------------------------
def _delta(lora_A, lora_B, scaling, fan_in_fan_out, *, scale=True, transpose=True, dtype=True, graph=False):
    with torch.set_grad_enabled(graph):
        low = lora_A.dtype in (torch.float16, torch.bfloat16)
        A, B = (lora_A.float(), lora_B.float()) if low else (lora_A, lora_B)
        delta = B @ A * (scaling if scale else 1.0)
        delta = delta.T if fan_in_fan_out and transpose else delta
        return delta.to(lora_A.dtype) if dtype else delta


def delta_without_scaling(lora_A, lora_B, scaling, fan_in_fan_out=False):
    return _delta(lora_A, lora_B, scaling, fan_in_fan_out, scale=False)


def delta_never_transposed(lora_A, lora_B, scaling, fan_in_fan_out=False):
    return _delta(lora_A, lora_B, scaling, fan_in_fan_out, transpose=False)


def delta_kept_in_float32(lora_A, lora_B, scaling, fan_in_fan_out=False):
    return _delta(lora_A, lora_B, scaling, fan_in_fan_out, dtype=False)


def delta_scaled_twice(lora_A, lora_B, scaling, fan_in_fan_out=False):
    return _delta(lora_A * scaling, lora_B, scaling, fan_in_fan_out)


def delta_in_the_autograd_graph(lora_A, lora_B, scaling, fan_in_fan_out=False):
    return _delta(lora_A, lora_B, scaling, fan_in_fan_out, graph=True)


# -- 8.7 adapter_state_dict ------------------------------------------------------------------------------------------------
def _state_dict(model, *, prefix=ADAPTER_PREFIX, suffix="", everything=False, copy=True, dtype=None):
    from course_lib.lora import lora_layers

    state = {}
    for name, layer in lora_layers(model).items():
        for pname, p in layer.named_parameters():
            if everything or pname.startswith("lora_"):
                part, _, leaf = pname.rpartition(".")
                weight = p.detach().clone() if copy else p.detach()
                state[f"{prefix}{name}.{part}{suffix}.{leaf}"] = weight if dtype is None else weight.to(dtype)
    return state


def adapter_state_dict_with_the_adapter_name(model):
    return _state_dict(model, suffix=".default")


def adapter_state_dict_without_the_prefix(model):
    return _state_dict(model, prefix="")


def adapter_state_dict_with_the_frozen_layers(model):
    return _state_dict(model, everything=True)


def adapter_state_dict_sharing_the_model_weights(model):
    return _state_dict(model, copy=False)


def adapter_state_dict_in_float32(model):
    return _state_dict(model, dtype=torch.float32)


def adapter_state_dict_driver(wrong):
    from course_lib.lora import run_adapter_weights

    return _entry_point(run_adapter_weights, wrong, wrong.__name__)


# -- 8.8 load_adapter_state_dict ----------------------------------------------------------------------------------------------
def _load(model, state_dict, *, strict_unknown=True, strict_missing=True, replace=None, pop=False, name_it=True):
    from course_lib.lora import lora_layers

    targets = {f"{ADAPTER_PREFIX}{name}.{part}.weight": (layer, part)
               for name, layer in lora_layers(model).items() for part in ("lora_A", "lora_B")}
    if strict_unknown and set(state_dict) - set(targets):
        raise KeyError(f"unknown entries {sorted(set(state_dict) - set(targets))}" if name_it else "unknown entries")
    if strict_missing and set(targets) - set(state_dict):
        raise KeyError(f"missing entries {sorted(set(targets) - set(state_dict))}" if name_it else "missing entries")
    for key, (layer, part) in targets.items():
        if key not in state_dict:
            continue
        module = getattr(layer, part)
        if state_dict[key].shape != module.weight.shape:
            raise ValueError(f"{key}: shape {tuple(state_dict[key].shape)}" if name_it else "a saved shape differs")
        saved = state_dict.pop(key) if pop else state_dict[key]   # popping empties the caller's dict
        if replace is not None:     # a new Parameter: the saved tensor's dtype, and an optimizer holds the old one
            module.weight = nn.Parameter(saved.clone(), requires_grad=replace == "trainable")
        else:
            with torch.no_grad():
                module.weight.copy_(saved)


def load_adapter_ignoring_unknown_entries(model, state_dict):
    _load(model, state_dict, strict_unknown=False)


def load_adapter_ignoring_missing_entries(model, state_dict):
    _load(model, state_dict, strict_missing=False)


def load_adapter_replacing_the_parameters(model, state_dict):
    _load(model, state_dict, replace="frozen")


def load_adapter_replacing_them_with_trainable_copies(model, state_dict):
    _load(model, state_dict, replace="trainable")


def load_adapter_popping_the_entries(model, state_dict):
    _load(model, state_dict, pop=True)


def load_adapter_refusing_without_naming_the_entry(model, state_dict):
    _load(model, state_dict, name_it=False)


def load_adapter_driver(wrong):
    from course_lib.lora import run_loaded_adapter

    return _entry_point(run_loaded_adapter, wrong, wrong.__name__)


# -- 8.9 nf4_code -----------------------------------------------------------------------------------------------------------
def _normal_code(positive_levels=9, negative_levels=8, offset=0.9677083, normalise=True):
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, positive_levels)[:-1].double()).float()
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, negative_levels)[:-1].double()).float()
    values = torch.cat([negative, torch.zeros(1), positive]).sort().values
    return values / values.max() if normalise else values


def nf4_code_uniform_grid():
    return torch.linspace(-1, 1, 16)


def nf4_code_symmetric_quantiles_without_zero():
    levels = (torch.arange(16, dtype=torch.float64) + 0.5) / 16
    values = torch.special.ndtri(levels).float()
    return values / values.max()


def nf4_code_not_normalised():
    return _normal_code(normalise=False)


def nf4_code_mirrored():
    return -_normal_code().flip(0)


def nf4_code_with_offset_one_half_step():
    return _normal_code(offset=1 - 1 / 32)


# -- 8.10 quantize_blockwise ------------------------------------------------------------------------------------------------
def _quantize(x, code, blocksize, *, scope="block", signed=False, rule="nearest"):
    flat = x.reshape(-1).float()
    n = flat.numel()
    n_blocks = -(-n // blocksize)
    blocks = F.pad(flat, (0, n_blocks * blocksize - n)).view(n_blocks, blocksize)
    if scope == "tensor":
        absmax = flat.abs().max().expand(n_blocks).clone()
    elif scope == "row":
        rows = x.float().reshape(x.shape[0] if x.ndim > 1 else 1, -1).abs().amax(dim=1)
        row_of_value = torch.arange(n) // (n // rows.numel())
        absmax = F.pad(rows[row_of_value], (0, n_blocks * blocksize - n)).view(n_blocks, blocksize).amax(dim=1)
        scale = F.pad(rows[row_of_value], (0, n_blocks * blocksize - n), value=1.0).view(n_blocks, blocksize)
        scaled = (blocks / scale).reshape(-1)[:n]
    else:
        absmax = blocks.amax(dim=1) if signed else blocks.abs().amax(dim=1)
    if scope != "row":
        scaled = (blocks / absmax.clamp(min=1e-38)[:, None]).clamp(-1, 1).reshape(-1)[:n]
    code = code.float()
    if rule == "floor":
        indices = (torch.searchsorted(code, scaled, right=True) - 1).clamp(min=0)
    else:
        indices = torch.bucketize(scaled, (code[1:] + code[:-1]) / 2, right=rule == "ties_up")
    return indices.to(torch.uint8), absmax


def quantize_absmax_over_the_whole_tensor(x, code, blocksize=64):
    return _quantize(x, code, blocksize, scope="tensor")


def quantize_absmax_per_row(x, code, blocksize=64):
    return _quantize(x, code, blocksize, scope="row")


def quantize_rounds_down_to_a_code(x, code, blocksize=64):
    return _quantize(x, code, blocksize, rule="floor")


def quantize_ties_to_the_upper_code(x, code, blocksize=64):
    return _quantize(x, code, blocksize, rule="ties_up")


def quantize_by_the_signed_maximum(x, code, blocksize=64):
    return _quantize(x, code, blocksize, signed=True)


def quantize_scaling_x_in_place(x, code, blocksize=64):
    flat = x.reshape(-1).float()            # for a float32 x: the caller's tensor itself, not a copy
    n = flat.numel()
    n_blocks = -(-n // blocksize)
    absmax = F.pad(flat.abs(), (0, n_blocks * blocksize - n)).view(n_blocks, blocksize).amax(dim=1)
    flat /= absmax.clamp(min=1e-38).repeat_interleave(blocksize)[:n]
    code = code.float()
    return torch.bucketize(flat.clamp(-1, 1), (code[1:] + code[:-1]) / 2).to(torch.uint8), absmax


# -- 8.11 dequantize_blockwise ----------------------------------------------------------------------------------------------
def dequantize_without_the_absmax(indices, absmax, code, blocksize, shape):
    return code.float()[indices.long()].reshape(tuple(shape))


def dequantize_blocks_restarting_each_row(indices, absmax, code, blocksize, shape):
    values = code.float()[indices.long()].reshape(shape[0] if len(shape) > 1 else 1, -1)
    per_row = -(-values.shape[1] // blocksize)
    block = torch.arange(values.shape[1]) // blocksize
    scales = absmax.float()[(torch.arange(values.shape[0])[:, None] * per_row + block).clamp(max=absmax.numel() - 1)]
    return (values * scales).reshape(tuple(shape))


def dequantize_repeats_instead_of_interleaving(indices, absmax, code, blocksize, shape):
    scales = absmax.float().repeat(blocksize)[:indices.numel()]
    return (code.float()[indices.long()] * scales).reshape(tuple(shape))


# -- 8.12-8.13 nibbles -----------------------------------------------------------------------------------------------------
def pack_nibbles_first_in_the_low_bits(indices):
    return indices[0::2] | (indices[1::2] << 4)


def pack_nibbles_adding_without_shifting(indices):
    return indices[0::2] + indices[1::2]


def pack_nibbles_as_int64(indices):
    return (indices[0::2].long() << 4) | indices[1::2].long()


def pack_nibbles_shifting_in_place(indices):
    high = indices[0::2]                    # a view: shifting it in place shifts the caller's indices
    high <<= 4
    return high | indices[1::2]


def unpack_nibbles_low_bits_first(packed, n):
    return torch.stack([packed & 0xF, packed >> 4], dim=1).flatten()[:n]


def unpack_nibbles_keeping_the_padding(packed, n):
    return torch.stack([packed >> 4, packed & 0xF], dim=1).flatten()


def unpack_nibbles_as_int64(packed, n):
    return torch.stack([packed >> 4, packed & 0xF], dim=1).flatten()[:n].long()


def unpack_nibbles_masking_in_place(packed, n):
    high = packed >> 4
    low = packed                            # the caller's bytes, masked in place
    low &= 0xF
    return torch.stack([high, low], dim=1).flatten()[:n]


# -- 8.14 double_quantize -------------------------------------------------------------------------------------------------------
def _double(absmax, code, blocksize, offset):
    from course_lib.lora import quantize_blockwise

    absmax_q, absmax2 = quantize_blockwise(absmax - offset, code, blocksize)
    return absmax_q, absmax2, offset


def double_quantize_without_centring(absmax, code, blocksize=256):
    return _double(absmax, code, blocksize, torch.tensor(0.0))


def double_quantize_centred_on_the_median(absmax, code, blocksize=256):
    return _double(absmax, code, blocksize, absmax.median())


def double_quantize_in_one_block(absmax, code, blocksize=256):
    return _double(absmax, code, absmax.numel(), absmax.mean())


def double_quantize_in_blocks_of_256(absmax, code, blocksize=256):
    return _double(absmax, code, 256, absmax.mean())


def double_quantize_centring_in_place(absmax, code, blocksize=256):
    from course_lib.lora import quantize_blockwise

    offset = absmax.mean()
    absmax -= offset                        # the caller's scales are centred too
    absmax_q, absmax2 = quantize_blockwise(absmax, code, blocksize)
    return absmax_q, absmax2, offset


# -- 8.15 NF4Linear.forward -------------------------------------------------------------------------------------------------------
def nf4_forward_keeps_the_dequantized_weight(self, x):
    bias = None if self.bias is None else self.bias.to(self.compute_dtype)   # F.linear saves W for x's gradient
    return F.linear(x.to(self.compute_dtype), self.dequantized_weight(), bias).to(x.dtype)


def nf4_forward_without_casting_back(self, x):
    bias = None if self.bias is None else self.bias.to(self.compute_dtype)
    return F.linear(x.to(self.compute_dtype), self.dequantized_weight(), bias)


def nf4_forward_in_the_input_dtype(self, x):
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, self.dequantized_weight(x.dtype), bias)


def nf4_forward_without_the_bias(self, x):
    return F.linear(x.to(self.compute_dtype), self.dequantized_weight()).to(x.dtype)


def nf4_forward_for_batches_of_sequences_only(self, x):
    batch, seq, _ = x.shape                 # (batch, seq, in_features) flattened to rows and back
    bias = None if self.bias is None else self.bias.to(self.compute_dtype)
    rows = F.linear(x.reshape(batch * seq, -1).to(self.compute_dtype), self.dequantized_weight(), bias)
    return rows.view(batch, seq, -1).to(x.dtype)


def nf4_linear_driver(wrong_forward):
    from course_lib.lora import NF4Linear, run_nf4_linear

    wrong = type(f"NF4Linear_{wrong_forward.__name__}", (NF4Linear,), {"forward": wrong_forward})
    return _entry_point(run_nf4_linear, wrong, wrong_forward.__name__)


# -- 8.16 training_memory --------------------------------------------------------------------------------------------------------
def _memory(linear_shapes, other_params, method, r, param_bytes, blocksize, double_quant, absmax_blocksize, *,
            states=2, per_matrix=True, lora_in_qlora=True, count_double_quant=True, packed_round_up=True, bits=False):
    adapted = sum(o * i for o, i in linear_shapes)
    lora = sum(r * (o + i) for o, i in linear_shapes)
    if method == "full":
        trainable, weights = other_params + adapted, (other_params + adapted) * param_bytes
    elif method == "lora":
        trainable, weights = lora, (other_params + adapted + lora) * param_bytes
    else:
        sizes = [o * i for o, i in linear_shapes] if per_matrix else [adapted]
        quantized = 0
        for n in sizes:
            blocks = -(-n // blocksize)
            double = double_quant and count_double_quant
            packed = -(-n // 2) if packed_round_up else n // 2
            quantized += packed + (blocks + 4 * -(-blocks // absmax_blocksize) + 4 if double else 4 * blocks)
        trainable = lora
        weights = (other_params + (lora if lora_in_qlora else 0)) * param_bytes + quantized
    memory = {"weights": weights, "gradients": trainable * param_bytes, "optimizer": states * trainable * param_bytes}
    if bits:        # counted in bits and divided by 8: the same numbers, as floats
        memory = {k: v * 8 / 8 for k, v in memory.items()}
    return memory | {"total": sum(memory.values())}


def memory_with_one_optimizer_state(linear_shapes, other_params, method, *, r=8, param_bytes=4, blocksize=64,
                                    double_quant=True, absmax_blocksize=256):
    return _memory(linear_shapes, other_params, method, r, param_bytes, blocksize, double_quant, absmax_blocksize,
                   states=1)


def memory_with_blocks_over_all_matrices(linear_shapes, other_params, method, *, r=8, param_bytes=4, blocksize=64,
                                         double_quant=True, absmax_blocksize=256):
    return _memory(linear_shapes, other_params, method, r, param_bytes, blocksize, double_quant, absmax_blocksize,
                   per_matrix=False)


def memory_qlora_without_the_adapters(linear_shapes, other_params, method, *, r=8, param_bytes=4, blocksize=64,
                                      double_quant=True, absmax_blocksize=256):
    return _memory(linear_shapes, other_params, method, r, param_bytes, blocksize, double_quant, absmax_blocksize,
                   lora_in_qlora=False)


def memory_ignores_double_quantization(linear_shapes, other_params, method, *, r=8, param_bytes=4, blocksize=64,
                                       double_quant=True, absmax_blocksize=256):
    return _memory(linear_shapes, other_params, method, r, param_bytes, blocksize, double_quant, absmax_blocksize,
                   count_double_quant=False)


def memory_packing_odd_matrices_rounded_down(linear_shapes, other_params, method, *, r=8, param_bytes=4, blocksize=64,
                                             double_quant=True, absmax_blocksize=256):
    return _memory(linear_shapes, other_params, method, r, param_bytes, blocksize, double_quant, absmax_blocksize,
                   packed_round_up=False)


def memory_with_the_default_block_sizes(linear_shapes, other_params, method, *, r=8, param_bytes=4, blocksize=64,
                                        double_quant=True, absmax_blocksize=256):
    return _memory(linear_shapes, other_params, method, r, param_bytes, 64, double_quant, 256)


def memory_in_float_bytes(linear_shapes, other_params, method, *, r=8, param_bytes=4, blocksize=64, double_quant=True,
                          absmax_blocksize=256):
    return _memory(linear_shapes, other_params, method, r, param_bytes, blocksize, double_quant, absmax_blocksize,
                   bits=True)


# -- 8.17 activation_memory ------------------------------------------------------------------------------------------------------
def _activations(config, batch_size, seq_len, method, r, attn_implementation, *, frozen_norms_keep=False,
                 first_norm_under_adapters=False, adapters=True, probabilities_in_sdpa=False, eager_probabilities=True,
                 repeated_kv=True, loss=True, value_bytes=4, ids=True):
    d, f, n_layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    h, k, e, vocab = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"], config["vocab_size"]
    full = method == "full"
    norm = d + 1 + (d if full or frozen_norms_keep else 0)
    if attn_implementation == "sdpa":
        attention = h * e + 2 * k * e + h + (h * seq_len if probabilities_in_sdpa else 0)
    else:
        attention = h * e + 2 * (h if repeated_kv else k) * e + (h * seq_len if eager_probabilities else 0)
    block = 2 * norm + 2 * d + h * e + f + attention + 3 * f + (7 * r if adapters and not full else 0)
    first = 0 if full or first_norm_under_adapters else norm
    values = n_layers * block - first + norm + (d if full else 0) + (vocab if loss else 0)
    return batch_size * seq_len * (value_bytes * values + (8 + (8 if full else 0) if ids else 0))


def activations_keeping_frozen_norms_inputs(config, batch_size, seq_len, method="full", *, r=8, attn_implementation="sdpa"):
    return _activations(config, batch_size, seq_len, method, r, attn_implementation, frozen_norms_keep=True)


def activations_counting_the_first_norm_under_adapters(config, batch_size, seq_len, method="full", *, r=8,
                                                       attn_implementation="sdpa"):
    return _activations(config, batch_size, seq_len, method, r, attn_implementation, first_norm_under_adapters=True)


def activations_without_the_adapters(config, batch_size, seq_len, method="full", *, r=8, attn_implementation="sdpa"):
    return _activations(config, batch_size, seq_len, method, r, attn_implementation, adapters=False)


def activations_with_probabilities_under_sdpa(config, batch_size, seq_len, method="full", *, r=8,
                                              attn_implementation="sdpa"):
    return _activations(config, batch_size, seq_len, method, r, attn_implementation, probabilities_in_sdpa=True)


def activations_eager_without_the_probabilities(config, batch_size, seq_len, method="full", *, r=8,
                                                attn_implementation="sdpa"):
    return _activations(config, batch_size, seq_len, method, r, attn_implementation, eager_probabilities=False)


def activations_eager_with_keys_not_repeated(config, batch_size, seq_len, method="full", *, r=8,
                                             attn_implementation="sdpa"):
    return _activations(config, batch_size, seq_len, method, r, attn_implementation, repeated_kv=False)


def activations_without_the_loss(config, batch_size, seq_len, method="full", *, r=8, attn_implementation="sdpa"):
    return _activations(config, batch_size, seq_len, method, r, attn_implementation, loss=False)


def activations_in_bfloat16_bytes(config, batch_size, seq_len, method="full", *, r=8, attn_implementation="sdpa"):
    return _activations(config, batch_size, seq_len, method, r, attn_implementation, value_bytes=2)


def activations_without_the_ids(config, batch_size, seq_len, method="full", *, r=8, attn_implementation="sdpa"):
    return _activations(config, batch_size, seq_len, method, r, attn_implementation, ids=False)


def activations_per_sequence_whatever_the_batch(config, batch_size, seq_len, method="full", *, r=8,
                                                attn_implementation="sdpa"):
    return _activations(config, 1, seq_len, method, r, attn_implementation)


MUTANTS = {
    "init_lora_weights": [init_b_random, init_a_with_kaiming_default_gain, init_both_zero, init_ignores_the_seed,
                          init_a_transposed],
    "lora_scaling": [scaling_r_over_alpha, scaling_ignores_rslora, scaling_rslora_by_r_squared, scaling_as_a_tensor],
    "lora_linear_outputs": [lora_linear_driver(m) for m in (
        lora_forward_without_scaling, lora_forward_dropout_on_the_base_too, lora_forward_adds_the_adapter_when_merged,
        lora_forward_returns_the_adapter_dtype, lora_forward_scales_the_base_too,
        lora_forward_for_batches_of_sequences_only)],
    "target_matches": [target_matches_substring, target_matches_endswith_without_the_dot, target_matches_regex_search,
                       target_matches_regex_prefix, target_matches_a_str_as_a_name,
                       target_matches_only_a_list_as_names],
    "lora_injection": [injection_driver(m) for m in (
        inject_leaves_the_biases_trainable, inject_freezes_nothing, inject_skips_conv1d, inject_skips_what_it_cannot_wrap,
        inject_with_one_seed_for_every_adapter, inject_matching_substrings, inject_without_the_dropout,
        inject_without_a_seed_seeds_from_zero, inject_into_a_copy, inject_wrapping_copies_of_the_layers)],
    "lora_delta_weight": [delta_without_scaling, delta_never_transposed, delta_kept_in_float32, delta_scaled_twice,
                          delta_in_the_autograd_graph],
    "adapter_weights": [adapter_state_dict_driver(m) for m in (
        adapter_state_dict_with_the_adapter_name, adapter_state_dict_without_the_prefix,
        adapter_state_dict_with_the_frozen_layers, adapter_state_dict_sharing_the_model_weights,
        adapter_state_dict_in_float32)],
    "loaded_adapter": [load_adapter_driver(m) for m in (
        load_adapter_ignoring_unknown_entries, load_adapter_ignoring_missing_entries,
        load_adapter_replacing_the_parameters, load_adapter_replacing_them_with_trainable_copies,
        load_adapter_popping_the_entries, load_adapter_refusing_without_naming_the_entry)],
    "nf4_code": [nf4_code_uniform_grid, nf4_code_symmetric_quantiles_without_zero, nf4_code_not_normalised,
                 nf4_code_mirrored, nf4_code_with_offset_one_half_step],
    "quantize_blockwise": [quantize_absmax_over_the_whole_tensor, quantize_absmax_per_row, quantize_rounds_down_to_a_code,
                           quantize_ties_to_the_upper_code, quantize_by_the_signed_maximum,
                           quantize_scaling_x_in_place],
    "dequantize_blockwise": [dequantize_without_the_absmax, dequantize_blocks_restarting_each_row,
                             dequantize_repeats_instead_of_interleaving],
    "pack_nibbles": [pack_nibbles_first_in_the_low_bits, pack_nibbles_adding_without_shifting, pack_nibbles_as_int64,
                     pack_nibbles_shifting_in_place],
    "unpack_nibbles": [unpack_nibbles_low_bits_first, unpack_nibbles_keeping_the_padding, unpack_nibbles_as_int64,
                       unpack_nibbles_masking_in_place],
    "double_quantize": [double_quantize_without_centring, double_quantize_centred_on_the_median,
                        double_quantize_in_one_block, double_quantize_in_blocks_of_256,
                        double_quantize_centring_in_place],
    "nf4_linear_outputs": [nf4_linear_driver(m) for m in (
        nf4_forward_keeps_the_dequantized_weight, nf4_forward_without_casting_back, nf4_forward_in_the_input_dtype,
        nf4_forward_without_the_bias,
        nf4_forward_for_batches_of_sequences_only)],
    "training_memory": [memory_with_one_optimizer_state, memory_with_blocks_over_all_matrices,
                        memory_qlora_without_the_adapters, memory_ignores_double_quantization,
                        memory_packing_odd_matrices_rounded_down, memory_with_the_default_block_sizes,
                        memory_in_float_bytes],
    "activation_memory": [activations_keeping_frozen_norms_inputs, activations_counting_the_first_norm_under_adapters,
                          activations_without_the_adapters, activations_with_probabilities_under_sdpa,
                          activations_eager_without_the_probabilities, activations_eager_with_keys_not_repeated,
                          activations_without_the_loss, activations_in_bfloat16_bytes, activations_without_the_ids,
                          activations_per_sequence_whatever_the_batch],
}
