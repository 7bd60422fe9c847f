"""Chapter 11 graded tests (public): quantization.

Part B (GGUF). The references are outside the course: ``gguf`` 0.19, the Python package of llama.cpp
(``gguf.quants.quantize``/``dequantize``, ``GGUFReader``), and ``transformers``' GGUF loader
(``from_pretrained(folder, gguf_file=...)``). gguf has no K-quant quantizer, so the Q4_K quantizer is
checked against its stated rule, written out here from llama.cpp's ``quantize_row_q4_K_ref`` with the
min/max choice of scales in place of ``make_qkx2_quants``, and its bytes are read back by gguf.

Each exercise's contract (its docstring), clause by clause, with the public tests that check it
(``test_`` dropped).

11.7 ``quantize_q8_0``
  - gguf's bytes for 1-D to 3-D inputs, Gaussian, heavy-tailed, large and tiny values (float16
    scale, little-endian; values from the float32 scale): quantize_q8_0_matches_gguf
  - round half away from zero, exactly (``2.5 -> 3``, ``-0.5 -> -1``, ``0.49999997 -> 0``), a zero
    block: quantize_q8_0_rounds_halves_away_from_zero
  - uint8 ``(..., n // 32 * 34)``, float16/bfloat16 inputs read as float32, a non-contiguous input,
    input unchanged: quantize_q8_0_takes_any_float_input_and_leaves_it_alone

11.8 ``dequantize_q8_0``
  - gguf's values for gguf's bytes and for arbitrary bytes (any int8, any finite float16 scale), float32
    ``(..., m // 34 * 32)``, input unchanged: dequantize_q8_0_matches_gguf

11.9 ``quantize_q4_0``
  - gguf's bytes on the inputs of 11.7: quantize_q4_0_matches_gguf
  - the signed value of largest magnitude (first on a tie) is level 0, ``+8.5`` and truncation, the top
    clipped to 15, low nibbles the first 16 values, a zero block: quantize_q4_0_of_hand_made_blocks
  - float16 input, transposed input, input unchanged: quantize_q4_0_takes_any_float_input_and_leaves_it_alone

11.10 ``dequantize_q4_0``
  - gguf's values for gguf's bytes and for arbitrary bytes, float32, input unchanged: dequantize_q4_0_matches_gguf

11.11 ``quantize_q4_k``
  - the bytes of the stated rule (steps 1-4, the 12 scale bytes, the nibble runs) on several shapes and
    distributions: quantize_q4_k_follows_the_min_max_rule
  - gguf reads them back close to the input, a zero super-block, all-positive and constant
    sub-blocks, a sub-block too small for its 6-bit scale: quantize_q4_k_is_read_back_by_gguf
  - error no worse than Q4_0 at the same 4.5 bits per weight (Gaussian, Student-t with 3 degrees of
    freedom): quantize_q4_k_beats_q4_0_at_the_same_bits
  - float16 input, input unchanged: quantize_q4_k_takes_any_float_input_and_leaves_it_alone

11.12 ``dequantize_q4_k``
  - gguf's values for rule bytes and for arbitrary bytes (every 6-bit scale and minimum, both halves
    of the packing), float32, input unchanged: dequantize_q4_k_matches_gguf

Not graded (the chapter's scaffolding, run with the reference solutions): the block table; the file
:func:`write_gguf` writes, read back by ``GGUFReader`` (metadata, tensor types and shapes, bytes equal to
the quantizers'), loaded by ``transformers`` (logits of the dequantized weights exactly, of the original
model within a measured tolerance) with a tokenizer that encodes as the course tokenizer does; llama.cpp
runs it (marked ``llamacpp``: skipped without a llama.cpp binary on PATH); bad input is refused.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import numpy as np
import pytest
import torch

from grading.expect import assert_close, assert_unchanged
from tests.test_generation import solution_mode  # noqa: F401  (a fixture)
from tests.test_sft import chat_tokenizer, memo, tiny_course_lm  # noqa: F401  (chat_tokenizer: a fixture)


# == part B: GGUF ==
def gguf_quants():
    """``(gguf.quants, GGMLQuantizationType)``; the test is skipped where gguf is not installed."""
    gguf = pytest.importorskip("gguf")
    return gguf.quants, gguf.GGMLQuantizationType


def gguf_bytes(x: torch.Tensor, qtype: str) -> torch.Tensor:
    quants, types = gguf_quants()
    return torch.from_numpy(quants.quantize(x.float().numpy(), types[qtype]))


def gguf_values(data: torch.Tensor, qtype: str) -> torch.Tensor:
    quants, types = gguf_quants()
    return torch.from_numpy(np.ascontiguousarray(quants.dequantize(data.numpy(), types[qtype])))


def weights(seed: int, *shape: int, kind: str = "gauss", scale: float = 1.0) -> torch.Tensor:
    """Seeded test weights: ``gauss``, heavy-tailed ``t`` (Student-t, 3 degrees of freedom) or ``outliers``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    if kind == "t":
        x = x / (torch.randn(3, *shape, generator=g).pow(2).mean(0)).sqrt()   # normal / sqrt(chi2_3 / 3)
    elif kind == "outliers":
        x = torch.where(torch.rand(*shape, generator=g) < 0.01, 30 * x, x)
    return x * scale


def random_blocks(seed: int, rows: int, blocks: int, nbytes: int, scale_bytes: int) -> torch.Tensor:
    """Arbitrary block bytes ``(rows, blocks * nbytes)`` whose leading ``scale_bytes`` per block are
    finite float16 numbers (of either sign, subnormal to large) and the rest random bytes."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (rows, blocks, nbytes), generator=g, dtype=torch.uint8)
    scales = (torch.randn(rows, blocks, scale_bytes // 2, generator=g) * 10.0 ** torch.randint(
        -7, 3, (rows, blocks, scale_bytes // 2), generator=g)).half()
    data[..., :scale_bytes] = scales.view(torch.uint8)
    return data.reshape(rows, blocks * nbytes)


def assert_same_bytes(got, expected: torch.Tensor, what: str, block_bytes: int) -> None:
    """Fail unless ``got`` is ``expected`` byte for byte, naming the first block and byte that differ."""
    __tracebackhide__ = True
    assert isinstance(got, torch.Tensor), f"{what}: expected a torch.Tensor, got {type(got).__name__}"
    assert got.dtype == torch.uint8, f"{what}: dtype {got.dtype}, expected torch.uint8 bytes"
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    wrong = (got != expected).reshape(-1, block_bytes)
    if bool(wrong.any()):
        block = int(wrong.any(dim=1).nonzero()[0])
        byte = int(wrong[block].nonzero()[0])
        raise AssertionError(
            f"{what}: {int(wrong.any(dim=1).sum())} of {wrong.shape[0]} blocks differ; first block {block}, byte "
            f"{byte}: got {got.reshape(-1, block_bytes)[block, byte].item()}, expected "
            f"{expected.reshape(-1, block_bytes)[block, byte].item()}")


def assert_same_values(got, expected: torch.Tensor, what: str, hint: str = "") -> None:
    """Exact equality of float32 values (NaN where the reference has NaN)."""
    __tracebackhide__ = True
    assert_close(got, expected, what=what, hint=hint, rtol=0.0, atol=0.0)


INPUTS = [  # (seed, shape, kind, scale): rows of whole 256-value super-blocks, so Q4_K takes them too
    (0, (256,), "gauss", 1.0), (1, (3, 512), "gauss", 0.02), (2, (2, 2, 256), "t", 1.0),
    (3, (4, 768), "outliers", 3.0), (4, (1, 256), "gauss", 1e-3), (5, (2, 256), "t", 300.0)]


# -- 11.7 quantize_q8_0 -------------------------------------------------------------------------------------------
@pytest.mark.exercise("11.7")
@pytest.mark.parametrize("seed, shape, kind, scale", INPUTS + [(6, (5, 32), "gauss", 1.0), (7, (2, 3, 64), "t", 0.1)])
def test_quantize_q8_0_matches_gguf(student, seed, shape, kind, scale):
    x = weights(seed, *shape, kind=kind, scale=scale)
    assert_same_bytes(student.quantize_q8_0(x), gguf_bytes(x, "Q8_0"), f"quantize_q8_0 of {kind} {shape}", 34)


@pytest.mark.exercise("11.7")
def test_quantize_q8_0_rounds_halves_away_from_zero(student):
    block = torch.zeros(32)
    block[:10] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -0.49999997, 126.5, -3.4999998])
    x = torch.stack([block, torch.zeros(32)])          # d = 1: the values themselves are rounded; then a zero block
    got = student.quantize_q8_0(x)
    assert_same_bytes(got, gguf_bytes(x, "Q8_0"), "quantize_q8_0 of a block with scale 1 and a zero block", 34)
    q = got[0, 2:12].view(torch.int8).tolist()
    assert q == [127, 1, 2, 3, -1, -3, 0, 0, 127, -3], (
        f"with scale d = 1 the values [127, 0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -0.49999997, 126.5, -3.4999998] "
        f"became {q}: round half away from zero (C's roundf), exactly")


@pytest.mark.exercise("11.7")
def test_quantize_q8_0_takes_any_float_input_and_leaves_it_alone(student):
    x = weights(8, 6, 64)
    for given, what in ((x.half(), "a float16 input"), (x.bfloat16(), "a bfloat16 input"),
                        (x.t().contiguous().t(), "a non-contiguous input")):
        before = given.clone()
        got = student.quantize_q8_0(given)
        assert_same_bytes(got, gguf_bytes(given.float().contiguous(), "Q8_0"), f"quantize_q8_0 of {what}", 34)
        assert_unchanged(given, before, what="x")


# -- 11.8 dequantize_q8_0 -----------------------------------------------------------------------------------------
@pytest.mark.exercise("11.8")
def test_dequantize_q8_0_matches_gguf(student):
    cases = [(gguf_bytes(weights(seed, *shape, kind=kind, scale=scale), "Q8_0"), f"gguf's Q8_0 of {kind} {shape}")
             for seed, shape, kind, scale in INPUTS[:4]]
    cases.append((random_blocks(9, 3, 4, 34, 2), "arbitrary Q8_0 bytes (3, 136)"))
    cases.append((random_blocks(10, 2, 2, 34, 2).reshape(2, 1, 68), "arbitrary Q8_0 bytes (2, 1, 68)"))
    for data, what in cases:
        before = data.clone()
        assert_same_values(student.dequantize_q8_0(data), gguf_values(data, "Q8_0"), f"dequantize_q8_0 of {what}",
                           hint="d is the float16 of bytes 0-1 (little-endian), the values are int8: d * q")
        assert_unchanged(data, before, what="data")


# -- 11.9 quantize_q4_0 -------------------------------------------------------------------------------------------
@pytest.mark.exercise("11.9")
@pytest.mark.parametrize("seed, shape, kind, scale", INPUTS)
def test_quantize_q4_0_matches_gguf(student, seed, shape, kind, scale):
    x = weights(seed, *shape, kind=kind, scale=scale)
    assert_same_bytes(student.quantize_q4_0(x), gguf_bytes(x, "Q4_0"), f"quantize_q4_0 of {kind} {shape}", 18)


@pytest.mark.exercise("11.9")
def test_quantize_q4_0_of_hand_made_blocks(student):
    ramp = torch.arange(32, dtype=torch.float32) - 16          # -16 .. 15: m = -16, d = 2
    tie = torch.zeros(32)
    tie[3], tie[20] = 4.0, -4.0                                # equal magnitudes: the first (+4) is m, d = -0.5
    top = torch.full((32,), 1.0)
    top[0] = 8.0                                               # m = 8, d = -1: -8 maps to level 16, clipped to 15
    top[31] = -8.0
    x = torch.stack([ramp, tie, top, torch.zeros(32)])
    got = student.quantize_q4_0(x)
    assert_same_bytes(got, gguf_bytes(x, "Q4_0"), "quantize_q4_0 of hand-made blocks", 18)
    d = got.reshape(4, 18)[:, :2].contiguous().view(torch.float16).flatten().tolist()
    assert d == [2.0, -0.5, -1.0, 0.0], f"scales {d}: d = m / -8 with m the signed value of largest magnitude"
    nibbles = got.reshape(4, 18)[:, 2:]
    q = torch.cat([nibbles & 15, nibbles >> 4], dim=1).tolist()     # low halves: values 0-15, high: 16-31
    expected = [[min(15, int(v * i + 8.5)) for v in row.tolist()] for row, i in zip(x, (0.5, -2.0, -1.0, 0.0))]
    assert q == expected, (
        f"4-bit values {q}, expected {expected}: q = min(15, trunc(x / d + 8.5)); byte j holds value j in its low "
        "nibble and value j + 16 in its high nibble")


# -- 11.10 dequantize_q4_0 ----------------------------------------------------------------------------------------
@pytest.mark.exercise("11.10")
def test_dequantize_q4_0_matches_gguf(student):
    cases = [(gguf_bytes(weights(seed, *shape, kind=kind, scale=scale), "Q4_0"), f"gguf's Q4_0 of {kind} {shape}")
             for seed, shape, kind, scale in INPUTS[:4]]
    cases.append((random_blocks(11, 3, 4, 18, 2), "arbitrary Q4_0 bytes (3, 72)"))
    for data, what in cases:
        before = data.clone()
        assert_same_values(student.dequantize_q4_0(data), gguf_values(data, "Q4_0"), f"dequantize_q4_0 of {what}",
                           hint="d * (q - 8), the first 16 values in the low nibbles, the last 16 in the high ones")
        assert_unchanged(data, before, what="data")

# -- 11.11 quantize_q4_k ------------------------------------------------------------------------------------------
def q4_k_rule(x: torch.Tensor) -> torch.Tensor:
    """The docstring's rule, in numpy float32, packed as llama.cpp's ``quantize_row_q4_K_ref`` packs."""
    rows = x.float().reshape(-1, 256).numpy()
    out = np.zeros((rows.shape[0], 144), dtype=np.uint8)
    f32 = np.float32
    for r, values in enumerate(rows):
        sub = values.reshape(8, 32)
        lo = np.minimum(sub.min(axis=1), f32(0))
        scales, mins = (sub.max(axis=1) - lo) / f32(15), -lo
        max_scale, max_min = scales.max(), mins.max()
        inv_scale = f32(63) / max_scale if max_scale > 0 else f32(0)
        inv_min = f32(63) / max_min if max_min > 0 else f32(0)
        ls = np.minimum(np.round(inv_scale * scales), 63).astype(np.int64)
        lm = np.minimum(np.round(inv_min * mins), 63).astype(np.int64)
        block = np.zeros(12, dtype=np.int64)
        for j in range(8):
            if j < 4:
                block[j], block[j + 4] = ls[j], lm[j]
            else:
                block[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4)
                block[j - 4] |= (ls[j] >> 4) << 6
                block[j] |= (lm[j] >> 4) << 6
        d, dmin = np.float16(max_scale / f32(63)), np.float16(max_min / f32(63))
        levels = np.zeros((8, 32), dtype=np.int64)
        for j in range(8):
            step = f32(d) * f32(ls[j])
            if step == 0:
                continue
            levels[j] = np.clip(np.round((sub[j] + f32(dmin) * f32(lm[j])) / step), 0, 15)
        nibbles = np.concatenate([levels[2 * k] | (levels[2 * k + 1] << 4) for k in range(4)])
        out[r] = np.concatenate([np.array([d, dmin]).view(np.uint8), block.astype(np.uint8), nibbles.astype(np.uint8)])
    return torch.from_numpy(out).reshape(*x.shape[:-1], x.shape[-1] // 256 * 144)


def special_super_blocks() -> torch.Tensor:
    """A zero super-block; one with an all-positive, a constant and a tiny sub-block (6-bit scale 0)."""
    g = torch.Generator().manual_seed(12)
    special = torch.randn(8, 32, generator=g)
    special[1] = special[1].abs() + 1.0                  # all positive: lo clamps to 0
    special[2] = -0.75                                   # constant (negative): scale 0, min 0.75
    special[5] = special[5] * 1e-3                       # scale far below the largest: sc rounds to 0
    special[7] = special[7] * 4.0                        # the largest scale and the top bits of sc_7, m_7
    return torch.stack([torch.zeros(256), special.flatten()])


@pytest.mark.exercise("11.11")
@pytest.mark.parametrize("seed, shape, kind, scale", INPUTS)
def test_quantize_q4_k_follows_the_min_max_rule(student, seed, shape, kind, scale):
    x = weights(seed, *shape, kind=kind, scale=scale)
    assert_same_bytes(student.quantize_q4_k(x), q4_k_rule(x), f"quantize_q4_k of {kind} {shape}", 144)


@pytest.mark.exercise("11.11")
def test_quantize_q4_k_is_read_back_by_gguf(student):
    x = torch.cat([special_super_blocks(), weights(13, 2, 256, kind="outliers")])
    got = student.quantize_q4_k(x)
    assert_same_bytes(got, q4_k_rule(x), "quantize_q4_k of a zero, a hand-made and two outlier super-blocks", 144)
    values = gguf_values(got, "Q4_K")
    assert bool((values[0] == 0).all()), "a zero super-block must be read back as zeros"
    sub = x.reshape(-1, 8, 32)
    step = (sub.amax(-1) - sub.amin(-1).clamp(max=0)) / 15
    error = (values.reshape(-1, 8, 32) - sub).abs().amax(-1)
    # within half a step, plus what the 6-bit scales and minimums (steps of d and dmin) can add
    bound = step / 2 + 2 * step.amax(-1, keepdim=True) / 63 + 2 * sub.amin(-1).clamp(max=0).abs().amax(-1, keepdim=True) / 63
    assert bool((error <= bound + 1e-6).all()), (
        f"gguf reads your bytes back as values up to {float((error - bound).max()):.3g} further from the input than "
        "the rule allows: check the layout (d, dmin, 12 scale bytes, nibble runs)")


@pytest.mark.exercise("11.11")
def test_quantize_q4_k_beats_q4_0_at_the_same_bits(student):
    for kind in ("gauss", "t"):
        x = weights(14, 64, 1024, kind=kind)
        q4_k = float((gguf_values(student.quantize_q4_k(x), "Q4_K") - x).pow(2).mean().sqrt())
        q4_0 = float((gguf_values(gguf_bytes(x, "Q4_0"), "Q4_0") - x).pow(2).mean().sqrt())
        # measured with the rule: 0.91 (Gaussian) and 0.78 (Student-t, 3 degrees of freedom) of Q4_0's error
        assert q4_k <= 0.95 * q4_0, (
            f"Q4_K's root-mean-square error on {kind} weights is {q4_k:.4f}, Q4_0's {q4_0:.4f}: the min/max rule "
            "should do better at the same 4.5 bits per weight")


@pytest.mark.exercise("11.11")
def test_quantize_q4_k_takes_any_float_input_and_leaves_it_alone(student):
    x = weights(15, 2, 512, scale=0.05)
    for given, what in ((x.half(), "a float16 input"), (x.reshape(2, 2, 256).transpose(0, 1), "a transposed input")):
        before = given.clone()
        assert_same_bytes(student.quantize_q4_k(given), q4_k_rule(given.float().contiguous()),
                          f"quantize_q4_k of {what}", 144)
        assert_unchanged(given, before, what="x")


# -- 11.12 dequantize_q4_k ----------------------------------------------------------------------------------------
def random_q4_k_blocks(seed: int, rows: int, blocks: int) -> torch.Tensor:
    """Arbitrary Q4_K bytes: finite float16 d and dmin, random scale bytes (all 6-bit numbers, high bits
    of the upper four included) and nibbles."""
    return random_blocks(seed, rows, blocks, 144, 4)


@pytest.mark.exercise("11.12")
def test_dequantize_q4_k_matches_gguf(student):
    cases = [(q4_k_rule(weights(16, 3, 512, kind="t")), "the rule's bytes of Student-t weights (3, 288)"),
             (q4_k_rule(special_super_blocks()), "the rule's bytes of hand-made super-blocks (2, 144)"),
             (random_q4_k_blocks(17, 4, 3), "arbitrary Q4_K bytes (4, 432)"),
             (random_q4_k_blocks(18, 2, 2).reshape(2, 2, 144), "arbitrary Q4_K bytes (2, 2, 144)")]
    for data, what in cases:
        before = data.clone()
        assert_same_values(student.dequantize_q4_k(data), gguf_values(data, "Q4_K"), f"dequantize_q4_k of {what}",
                           hint="(d * sc) * q - dmin * m; check the 6-bit unpacking of sub-blocks 4-7 and the nibble runs")
        assert_unchanged(data, before, what="data")

# -- not graded: the block table and the .gguf export (need the reference solutions) -------------------------------
def test_the_block_table_is_gguf_table():
    gguf = pytest.importorskip("gguf")
    from course_lib.quantization import GGUF_BLOCK_TYPES, gguf_bits_per_weight

    for name, sizes in GGUF_BLOCK_TYPES.items():
        assert sizes == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]], name
    assert [gguf_bits_per_weight(t) for t in ("F32", "F16", "Q8_0", "Q4_0", "Q4_K")] == [32, 16, 8.5, 4.5, 4.5]


GGUF_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_K")


def export_model(vocab: int, tokenizer):
    """A Llama-style course model whose rows fit every block type but the down projection's (272 values: whole
    Q4_K super-blocks in no row, whole 32-blocks in none of down_proj's)."""
    return tiny_course_lm("cpu", vocab, seed=3, hidden_size=256, intermediate_size=272, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).eval()


@pytest.fixture(scope="module")
def exported(chat_tokenizer, tmp_path_factory):
    """``(model, folder)``: the model written once per block type to ``folder / f"course-{type}.gguf"``."""
    pytest.importorskip("gguf")
    from tests.test_generation import reference_mode

    def make():
        folder = tmp_path_factory.mktemp("gguf")
        with reference_mode():
            from course_lib.quantization import write_gguf

            model = export_model(len(chat_tokenizer), chat_tokenizer)
            for qtype in GGUF_TYPES:
                write_gguf(model, chat_tokenizer, folder / f"course-{qtype}.gguf", qtype)
        return model, folder

    return memo("gguf export", make)


def expected_tensors(model, qtype):
    """{gguf name: (type name, logical shape, bytes)} that write_gguf must store."""
    from course_lib.quantization import _gguf_tensor_name, llama_cpp_permute, quantize_gguf_tensor

    config, out = model.config, {}
    for name, weight in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            weight = llama_cpp_permute(weight, config.num_attention_heads if "q_proj" in name else config.num_key_value_heads)
        kind, data = quantize_gguf_tensor(weight, qtype)
        out[_gguf_tensor_name(name)] = (kind, tuple(weight.shape), data.contiguous().view(torch.uint8).flatten())
    return out


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_gguf_reader_reads_back_metadata_types_and_the_quantizers_bytes(solution_mode, exported, chat_tokenizer, qtype):
    from gguf import GGUFReader

    model, folder = exported
    reader = GGUFReader(folder / f"course-{qtype}.gguf")
    config = model.config

    def field(key):
        return reader.get_field(key).contents()

    assert field("general.architecture") == "llama"
    expected = {"llama.context_length": config.max_position_embeddings, "llama.embedding_length": 256,
                "llama.block_count": 2, "llama.feed_forward_length": 272, "llama.attention.head_count": 4,
                "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 64, "llama.vocab_size": 4096,
                "general.file_type": {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K": 15}[qtype],
                "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.bos_token_id": chat_tokenizer.bos_token_id,
                "tokenizer.ggml.eos_token_id": chat_tokenizer.eos_token_id,
                "tokenizer.ggml.padding_token_id": chat_tokenizer.pad_token_id}
    for key, value in expected.items():
        assert field(key) == value, key
    assert field("llama.rope.freq_base") == pytest.approx(config.rope_theta)
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(config.norm_eps)
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == 4096 and tokens[chat_tokenizer.eos_token_id] == chat_tokenizer.eos_token
    assert field("tokenizer.ggml.token_type")[chat_tokenizer.eos_token_id] == 3       # control
    assert "{%- generation -%}" not in field("tokenizer.chat_template")

    want = expected_tensors(model, qtype)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(want), "tied embeddings: no output.weight"
    for name, (kind, shape, data) in want.items():
        tensor = got[name]
        assert tensor.tensor_type.name == kind, name
        assert tuple(int(n) for n in reversed(tensor.shape)) == shape, name      # GGUF lists the row length first
        assert torch.equal(torch.from_numpy(np.asarray(tensor.data).copy()).view(torch.uint8).flatten(), data), name
    kinds = {name: got[name].tensor_type.name for name in ("blk.0.attn_norm.weight", "blk.0.ffn_down.weight",
                                                            "blk.0.ffn_up.weight", "token_embd.weight")}
    fallback = "F32" if qtype == "F32" else "F16"
    assert kinds == {"blk.0.attn_norm.weight": "F32", "blk.0.ffn_down.weight": fallback,
                     "blk.0.ffn_up.weight": qtype, "token_embd.weight": qtype}


# the largest logit change over the largest logit, measured on three seeds of this model: F32 3.8e-7, F16 4.3e-4,
# Q8_0 1.1e-2, Q4_0 0.20, Q4_K 0.17 (a random model's logits are small: 4 bits move them visibly)
GGUF_LOGIT_TOLERANCE = {"F32": 1e-5, "F16": 2e-3, "Q8_0": 3e-2, "Q4_0": 0.4, "Q4_K": 0.4}


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_transformers_loads_the_gguf_file(solution_mode, exported, chat_tokenizer, qtype):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from course_lib.language_model import to_llama

    model, folder = exported
    logging.set_verbosity_error()
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=f"course-{qtype}.gguf").eval()
    ids = torch.tensor([chat_tokenizer("The quick brown fox jumps over the lazy dog, 12 times.")["input_ids"]])
    # the weights the file holds, dequantized by the reference: transformers must compute exactly with them
    held = to_llama(model)
    dequantize = {"Q8_0": "dequantize_q8_0", "Q4_0": "dequantize_q4_0", "Q4_K": "dequantize_q4_k"}
    import solutions.quantization as reference
    from course_lib.quantization import quantize_gguf_tensor

    state = held.state_dict()
    for name, weight in state.items():
        kind, data = quantize_gguf_tensor(weight, qtype)
        state[name] = getattr(reference, dequantize[kind])(data) if kind in dequantize else data.float()
    held.load_state_dict(state)
    with torch.no_grad():
        original, expected, got = model(ids).logits, held(ids).logits, loaded(ids).logits
    assert_close(got, expected, what=f"logits of the {qtype} file loaded by transformers", rtol=0, atol=2e-5)
    drift = float((got - original).abs().max() / original.abs().max())
    assert drift <= GGUF_LOGIT_TOLERANCE[qtype], f"{qtype}: logits moved by {drift:.3g} of their largest magnitude"


def test_the_gguf_tokenizer_encodes_as_the_course_tokenizer(solution_mode, exported, chat_tokenizer):
    from transformers import AutoTokenizer

    _, folder = exported
    loaded = AutoTokenizer.from_pretrained(folder, gguf_file="course-Q8_0.gguf")
    assert len(loaded) == len(chat_tokenizer)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (
        chat_tokenizer.bos_token, chat_tokenizer.eos_token, chat_tokenizer.pad_token)
    for text in ["The quick brown fox jumps over the lazy dog, 12 times.", "  two  spaces\n\nand\ttabs ",
                 "it's 3.14 -- isn't it?", "ünïcödé 和 中文 🙂", "<|im_start|>user\nhi<|im_end|><|endoftext|>"]:
        assert loaded(text)["input_ids"] == chat_tokenizer(text)["input_ids"], text
    messages = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"}]
    assert loaded.apply_chat_template(messages, tokenize=False) == chat_tokenizer.apply_chat_template(messages, tokenize=False)


LLAMA_CPP_BINARIES = ("llama-completion", "llama-simple", "llama-cli")


@pytest.mark.llamacpp
def test_llama_cpp_runs_the_gguf_file(solution_mode, exported):
    from course_lib.quantization import LLAMA_CPP_COMMAND

    binary = next((b for b in LLAMA_CPP_BINARIES if shutil.which(b)), None)
    if binary is None:
        pytest.skip(f"no llama.cpp binary ({', '.join(LLAMA_CPP_BINARIES)}) on PATH")
    _, folder = exported
    path = folder / "course-Q8_0.gguf"
    if binary == "llama-simple":
        command = [binary, "-m", str(path), "-n", "8", "Once upon a time"]
    else:   # the command the chapter tells a reader to run, with a shorter generation
        command = [binary, *shlex.split(LLAMA_CPP_COMMAND.format(path=shlex.quote(str(path)), prompt="Once upon a time"))[1:]]
        command[command.index("-n") + 1] = "8"
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Once upon a time" in run.stdout + run.stderr


@pytest.mark.parametrize("call, error, name", [
    (lambda q: q.quantize_q8_0(torch.ones(33)), ValueError, "x"),
    (lambda q: q.quantize_q8_0(torch.ones(32, dtype=torch.int64)), TypeError, "x"),
    (lambda q: q.quantize_q8_0([1.0] * 32), TypeError, "x"),
    (lambda q: q.quantize_q4_0(torch.full((32,), float("nan"))), ValueError, "finite"),
    (lambda q: q.quantize_q4_0(torch.ones(0)), ValueError, "x"),
    (lambda q: q.quantize_q4_k(torch.ones(2, 128)), ValueError, "256"),
    (lambda q: q.dequantize_q8_0(torch.zeros(33, dtype=torch.uint8)), ValueError, "data"),
    (lambda q: q.dequantize_q8_0(torch.zeros(34)), TypeError, "data"),
    (lambda q: q.dequantize_q4_0(torch.zeros(2, 17, dtype=torch.uint8)), ValueError, "18"),
    (lambda q: q.dequantize_q4_k(torch.zeros(145, dtype=torch.uint8)), ValueError, "144"),
    (lambda q: q.gguf_bits_per_weight("Q3_K"), ValueError, "qtype"),
    (lambda q: q.quantize_gguf_tensor(torch.ones(2, 32), "Q5_0"), ValueError, "qtype"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_gets_an_error_naming_the_argument(solution_mode, call, error, name):
    from course_lib import quantization

    with pytest.raises(error, match=name):
        call(quantization)
# == end of part B ==
