"""Chapter 11: quantization.

- **GGUF blocks and the .gguf export** (11.7-11.12): the block formats llama.cpp stores weights in,
  byte for byte as ``gguf.quants`` (the Python package of llama.cpp) writes and reads them: Q8_0
  (:func:`quantize_q8_0`, :func:`dequantize_q8_0`: 32 values, a float16 scale and 32 int8), Q4_0
  (:func:`quantize_q4_0`, :func:`dequantize_q4_0`: 32 values, a float16 scale and 16 bytes of 4-bit
  values) and the "K-quant" Q4_K (:func:`quantize_q4_k`, :func:`dequantize_q4_k`: super-blocks of 256
  values in eight sub-blocks of 32, whose scales and minimums are themselves quantized to 6 bits).
  :data:`GGUF_BLOCK_TYPES` tabulates the formats; :func:`write_gguf` writes a course model and its
  tokenizer to a ``.gguf`` file that llama.cpp runs and ``transformers`` loads, quantized by *your*
  11.7/11.9/11.11.

Conventions used by every exercise of part B:

- **Values in, bytes out.** A quantizer takes a float tensor ``(..., n)`` (any float dtype, read as
  float32) and returns ``torch.uint8`` ``(..., n // block_size * bytes_per_block)``: each row of ``n``
  values is cut into consecutive blocks and each block becomes its bytes, in order. A dequantizer
  takes those bytes and returns float32 ``(..., n)``. Leading dimensions are kept.
- **Little-endian.** A float16 scale occupies two bytes, low byte first, as ``x.view(torch.uint8)``
  lays it out on every machine PyTorch runs on.
- **Float32 arithmetic, in the stated order.** Byte equality with the reference needs the same float32
  operations in the same order (``x * (1 / d)`` is not always ``x / d``); each docstring states them.
- Inputs are never modified.
"""

from __future__ import annotations

from pathlib import Path

import torch

from course_lib.checks import check_tensor
from course_lib.exercises import exercise


# == part B: GGUF ==
QK4_0 = QK8_0 = 32          # values per Q4_0 / Q8_0 block
QK_K = 256                  # values per K-quant super-block
K_SUBBLOCK = 32             # values per Q4_K sub-block (8 per super-block)
# name: (values per block, bytes per block), as gguf.GGML_QUANT_SIZES; bits per weight = 8 * bytes / values
GGUF_BLOCK_TYPES = {"F32": (1, 4), "F16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_K": (256, 144)}
GGUF_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K": 15}   # general.file_type (LlamaFileType)
GGUF_TEMPLATE_TAGS = ("{%- generation -%}", "{%- endgeneration -%}", "{% generation %}", "{% endgeneration %}")
LLAMA_CPP_COMMAND = 'llama-completion -m {path} -p "{prompt}" -n 32 --temp 0 -no-cnv'


def gguf_bits_per_weight(qtype: str) -> float:
    """Bits a weight costs in block type ``qtype`` (scales included): ``8 * bytes / values`` per block."""
    if qtype not in GGUF_BLOCK_TYPES:
        raise ValueError(f"qtype must be one of {sorted(GGUF_BLOCK_TYPES)}, got {qtype!r}")
    values, nbytes = GGUF_BLOCK_TYPES[qtype]
    return 8 * nbytes / values


def _check_values(x, block_size: int) -> None:
    check_tensor("x", x, floating=True, min_ndim=1)
    if x.shape[-1] == 0 or x.shape[-1] % block_size:
        raise ValueError(f"x's last dimension must be a positive multiple of {block_size} (whole blocks), "
                         f"got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (an inf or NaN makes its block's scale inf or NaN)")


def _check_blocks(data, qtype: str) -> None:
    check_tensor("data", data, min_ndim=1)
    if data.dtype != torch.uint8:
        raise TypeError(f"data must be torch.uint8 bytes, got {data.dtype}")
    nbytes = GGUF_BLOCK_TYPES[qtype][1]
    if data.shape[-1] == 0 or data.shape[-1] % nbytes:
        raise ValueError(f"data's last dimension must be a positive multiple of {nbytes} (whole {qtype} blocks "
                         f"of {nbytes} bytes), got shape {tuple(data.shape)}")


def _validate_quantize_q8_0(x) -> None:
    _check_values(x, QK8_0)


def _validate_dequantize_q8_0(data) -> None:
    _check_blocks(data, "Q8_0")


def _validate_quantize_q4_0(x) -> None:
    _check_values(x, QK4_0)


def _validate_dequantize_q4_0(data) -> None:
    _check_blocks(data, "Q4_0")


def _validate_quantize_q4_k(x) -> None:
    _check_values(x, QK_K)


def _validate_dequantize_q4_k(data) -> None:
    _check_blocks(data, "Q4_K")


@exercise("11.7", points=2, validate=_validate_quantize_q8_0)
def quantize_q8_0(x: torch.Tensor) -> torch.Tensor:
    """Q8_0: blocks of 32 values as a float16 scale and 32 signed bytes, as ``gguf.quants.quantize(x,
    GGMLQuantizationType.Q8_0)`` (and llama.cpp's ``quantize_row_q8_0_ref``) writes them.

    Args:
        x: float ``(..., n)`` with ``n`` a positive multiple of 32, finite; any float dtype is read as
            float32 first. Not modified.

    Returns:
        ``torch.uint8`` ``(..., n // 32 * 34)``. For each block of 32 consecutive values of a row, 34
        bytes: the scale ``d`` as float16 (2 bytes, little-endian), then ``q[0..31]`` as int8 (two's
        complement). All arithmetic in float32:

        - ``d = max(|x_i|) / 127``;
        - ``q_i = round(x_i * id)`` with ``id = 1 / d`` (``id = 0`` when ``d == 0``), *round half away
          from zero* (C's ``roundf``: ``2.5 -> 3``, ``-0.5 -> -1``) computed exactly, so that
          ``0.49999997 -> 0``;
        - ``q`` uses the float32 ``d``; only the stored copy of ``d`` is rounded to float16.

        An all-zero block is ``d = 0`` and ``q = 0``.

    Hint:
        Reshape to ``(..., n // 32, 32)``. ``torch.round`` rounds halves to even, and ``floor(|v| +
        0.5)`` is wrong for ``0.49999997`` (the sum rounds up to 1): truncate, then step away from
        zero where the dropped fraction ``|v - trunc(v)|`` is at least 0.5. ``t.half().view(torch.uint8)``
        gives a float16's two bytes; ``torch.cat`` the scale bytes before the values.
    """
    raise NotImplementedError("Exercise 11.7: implement quantize_q8_0 in quantization.py")


@exercise("11.8", points=1, validate=_validate_dequantize_q8_0)
def dequantize_q8_0(data: torch.Tensor) -> torch.Tensor:
    """The values that Q8_0 bytes stand for, as ``gguf.quants.dequantize(data, GGMLQuantizationType.Q8_0)``.

    Args:
        data: ``torch.uint8`` ``(..., m)`` with ``m`` a positive multiple of 34 (whole blocks, as
            :func:`quantize_q8_0` returns them). Not modified.

    Returns:
        float32 ``(..., m // 34 * 32)``: block by block, ``d * q_i`` with ``d`` the block's float16
        scale (its first two bytes, little-endian) converted to float32 and ``q_i`` its next 32 bytes
        read as int8.

    Hint:
        ``bytes.view(torch.float16)`` and ``bytes.view(torch.int8)`` reinterpret bytes without copying
        (the last dimension must be contiguous: slice, then ``.contiguous()``).
    """
    raise NotImplementedError("Exercise 11.8: implement dequantize_q8_0 in quantization.py")


@exercise("11.9", points=2, validate=_validate_quantize_q4_0)
def quantize_q4_0(x: torch.Tensor) -> torch.Tensor:
    """Q4_0: blocks of 32 values as a float16 scale and 16 bytes of 4-bit values, as
    ``gguf.quants.quantize(x, GGMLQuantizationType.Q4_0)`` (llama.cpp's ``quantize_row_q4_0_ref``).

    Args:
        x: float ``(..., n)`` with ``n`` a positive multiple of 32, finite (read as float32). Not modified.

    Returns:
        ``torch.uint8`` ``(..., n // 32 * 18)``: per block, 2 bytes of float16 ``d`` then 16 bytes of
        nibbles. In float32:

        - ``m`` is the block's value of largest magnitude *with its sign* (the first one on a tie of
          magnitudes) and ``d = m / -8``: ``m`` itself becomes level 0, i.e. ``-8 * d``, exactly;
        - ``id = 1 / d`` (0 when ``d == 0``) and ``q_i = min(15, trunc(x_i * id + 8.5))``: the value
          ``(q_i - 8) * d`` nearest to ``x_i``, halves rounded up, with the positive end clipped to 7;
        - byte ``j`` (``j = 0..15``) holds ``q_j`` in its *low* nibble and ``q_{j+16}`` in its *high*
          nibble: the first 16 values in the low halves, the last 16 in the high halves.

        An all-zero block is ``d = 0`` and every ``q = 8``.

    Hint:
        ``torch.argmax`` of ``|x|`` along the block and ``gather`` give ``m``. The nibble order is not
        that of ``bitsandbytes`` (Chapter 8's :func:`~course_lib.lora.pack_nibbles`, pairs of
        neighbours, first in the high half): ``q[..., :16] | (q[..., 16:] << 4)``.
    """
    raise NotImplementedError("Exercise 11.9: implement quantize_q4_0 in quantization.py")


@exercise("11.10", points=1, validate=_validate_dequantize_q4_0)
def dequantize_q4_0(data: torch.Tensor) -> torch.Tensor:
    """The values that Q4_0 bytes stand for, as ``gguf.quants.dequantize(data, GGMLQuantizationType.Q4_0)``.

    Args:
        data: ``torch.uint8`` ``(..., m)`` with ``m`` a positive multiple of 18. Not modified.

    Returns:
        float32 ``(..., m // 18 * 32)``: per block, ``d * (q_i - 8)`` with ``d`` the float16 scale of
        its first two bytes and ``q_0..q_15`` the low nibbles, ``q_16..q_31`` the high nibbles of its
        other 16 bytes.

    Hint:
        ``qs & 0x0F`` and ``qs >> 4``, concatenated (not interleaved) along the block.
    """
    raise NotImplementedError("Exercise 11.10: implement dequantize_q4_0 in quantization.py")


@exercise("11.11", points=3, validate=_validate_quantize_q4_k)
def quantize_q4_k(x: torch.Tensor) -> torch.Tensor:
    """Q4_K: super-blocks of 256 values in llama.cpp's ``block_q4_K`` layout (4.5 bits per weight, as
    Q4_0), quantized by the min/max rule below.

    Args:
        x: float ``(..., n)`` with ``n`` a positive multiple of 256, finite (read as float32). Not modified.

    Returns:
        ``torch.uint8`` ``(..., n // 256 * 144)``. Each super-block is eight sub-blocks of 32 values
        (``j = 0..7``); value ``i`` of sub-block ``j`` stands for ``D_j * q_ji - M_j`` with a 4-bit
        ``q`` and ``D_j = d * sc_j``, ``M_j = dmin * m_j`` for 6-bit ``sc_j, m_j``. All in float32:

        1. Per sub-block: ``lo_j = min(0, min_i x_ji)`` (the range always holds 0, as llama.cpp's),
           ``scale_j = (max_i x_ji - lo_j) / 15`` and ``min_j = -lo_j`` (>= 0).
        2. ``S = max_j scale_j``, ``N = max_j min_j``; ``d = S / 63`` and ``dmin = N / 63``, each
           stored as float16.
        3. ``sc_j = min(63, round((63 / S) * scale_j))`` and ``m_j = min(63, round((63 / N) * min_j))``
           (0 where ``S`` or ``N`` is 0), *round half to even* (llama.cpp's ``nearest_int``).
        4. With the stored scales, ``D_j = float32(d) * sc_j`` and ``M_j = float32(dmin) * m_j``, each
           value is rounded again: ``q_ji = clamp(round((x_ji + M_j) / D_j), 0, 15)`` (half to even;
           ``q = 0`` where ``D_j == 0``).

        The 144 bytes: ``d`` and ``dmin`` as float16 (2 + 2 bytes), then 12 bytes of scales, then 128
        bytes of nibbles.

        - Scales: for ``j < 4`` byte ``j`` is ``sc_j`` and byte ``j + 4`` is ``m_j`` (low 6 bits); for
          ``j >= 4`` byte ``j + 4`` is ``(sc_j & 15) | (m_j & 15) << 4`` and the top two bits of
          ``sc_j`` and ``m_j`` go to the top two bits of bytes ``j - 4`` and ``j``:
          ``sc_j >> 4 << 6`` and ``m_j >> 4 << 6``.
        - Nibbles: four runs of 32 bytes; run ``r`` holds sub-block ``2r`` in the low nibbles and
          sub-block ``2r + 1`` in the high nibbles (byte ``i`` of run ``r``: ``q_{2r,i} | q_{2r+1,i} << 4``).

        ``gguf.quants.dequantize(bytes, GGMLQuantizationType.Q4_K)`` and your :func:`dequantize_q4_k`
        read them as the same values. llama.cpp's own quantizer (``quantize_row_q4_K_ref``) stores
        the same layout, but chooses each sub-block's ``scale_j, min_j`` by ``make_qkx2_quants``: it
        starts from this min/max and then tries 20 slightly shrunk or stretched ranges, refitting
        scale and minimum by least squares (weighted by ``x^2`` plus the block's mean square) and
        keeping the best; with an importance matrix (``llama-quantize --imatrix``) the weights come
        from activations instead. This rule skips that search.

    Hint:
        Work on ``(..., n // 256, 8, 32)``. Make ``sc`` and ``m`` integer tensors of shape ``(..., 8)``
        and build the 12 bytes from their first and last four; the top two bits of a 6-bit number are
        ``v >> 4``.
    """
    raise NotImplementedError("Exercise 11.11: implement quantize_q4_k in quantization.py")


@exercise("11.12", points=2, validate=_validate_dequantize_q4_k)
def dequantize_q4_k(data: torch.Tensor) -> torch.Tensor:
    """The values that Q4_K bytes stand for, as ``gguf.quants.dequantize(data, GGMLQuantizationType.Q4_K)``.

    Args:
        data: ``torch.uint8`` ``(..., m)`` with ``m`` a positive multiple of 144 (the layout of
            :func:`quantize_q4_k`). Not modified.

    Returns:
        float32 ``(..., m // 144 * 256)``: value ``i`` of sub-block ``j`` is ``(d * sc_j) * q_ji -
        (dmin * m_j)``, with ``d, dmin`` the two float16 numbers converted to float32, the 6-bit
        ``sc_j, m_j`` unpacked from the 12 scale bytes and the 4-bit ``q`` from the 128 nibble bytes,
        both as :func:`quantize_q4_k` packs them; the products and the difference in that order, in float32.

    Hint:
        For ``j >= 4``: ``sc_j = (b[j + 4] & 15) | (b[j - 4] >> 6) << 4`` and ``m_j = (b[j + 4] >> 4) |
        (b[j] >> 6) << 4``. Widen bytes to ``torch.int32`` before shifting left.
    """
    raise NotImplementedError("Exercise 11.12: implement dequantize_q4_k in quantization.py")


# -- the .gguf export -------------------------------------------------------------------------------------
def quantize_gguf_tensor(weight: torch.Tensor, qtype: str) -> tuple[str, torch.Tensor]:
    """``(type, data)`` of one tensor as :func:`write_gguf` stores it in a file of type ``qtype``.

    1-D tensors (norms) stay float32. A matrix is stored in ``qtype`` by the chapter's quantizers
    (:func:`quantize_q8_0`, :func:`quantize_q4_0`, :func:`quantize_q4_k`: your code, in student mode)
    when its rows are whole blocks, else as float16, as llama.cpp's converter and ``llama-quantize``
    fall back; ``"F32"``/``"F16"`` files store matrices as float32/float16. ``data`` is ``torch.uint8``
    for a quantized type and float32/float16 otherwise, shaped ``(rows, bytes)`` or ``(rows, n)``.
    """
    if qtype not in GGUF_FILE_TYPES:
        raise ValueError(f"qtype must be one of {sorted(GGUF_FILE_TYPES)}, got {qtype!r}")
    weight = weight.detach().float().cpu()
    if weight.ndim < 2 or qtype == "F32":
        return "F32", weight.contiguous()
    block_size = GGUF_BLOCK_TYPES[qtype][0]
    if qtype == "F16" or weight.shape[-1] % block_size:
        return "F16", weight.half().contiguous()
    quantizer = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_K": quantize_q4_k}[qtype]
    return qtype, quantizer(weight)


def llama_cpp_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """The rows of a q or k projection ``(n_head * head_dim, d)`` in llama.cpp's order.

    Hugging Face's Llama rotates the two *halves* of each head (``rotate_half``); llama.cpp's RoPE
    rotates neighbouring *pairs*. Its converter (``LlamaModel.permute`` in ``convert_hf_to_gguf.py``)
    reorders each head's rows from ``[first half, second half]`` to interleaved pairs, so the same
    weights give the same attention; ``transformers`` undoes it when it loads a GGUF file.
    """
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))


def _gguf_tensor_name(name: str) -> str:
    """llama.cpp's name for a parameter of a Llama-style course model (``"blk.0.attn_q.weight"``)."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if name in names:
        return names[name]
    layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    parts = name.split(".")   # model.layers.{i}.{module...}.weight
    if parts[:2] == ["model", "layers"] and ".".join(parts[3:-1]) in layer:
        return f"blk.{parts[2]}.{layer['.'.join(parts[3:-1])]}.{parts[-1]}"
    raise ValueError(f"no GGUF name for parameter {name!r} of a Llama-style model")


def gguf_chat_template(template: str) -> str:
    """A chat template without ``{% generation %}`` marks: they only tell ``transformers`` which tokens
    are the assistant's (for training masks), and llama.cpp's Jinja engine does not know the tag."""
    for tag in GGUF_TEMPLATE_TAGS:
        template = template.replace(tag, "")
    return template


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """The tokenizer as llama.cpp's ``gpt2`` (byte-level BPE) vocabulary: tokens in id order, their
    types (control for special tokens, else normal), merges, special ids, chat template."""
    import json

    from gguf import TokenType

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model["type"] != "BPE":
        raise ValueError(f"only a byte-level BPE tokenizer converts to GGUF's 'gpt2' model, got {model['type']}")
    vocab = tokenizer.get_vocab()
    if len(vocab) != vocab_size:
        raise ValueError(f"the tokenizer has {len(vocab)} tokens for the model's vocab_size={vocab_size}")
    tokens = sorted(vocab, key=vocab.get)
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")         # GPT-2's split pattern: that of the course tokenizer (Chapter 1)
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.CONTROL if t in special else TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for add, token in ((writer.add_bos_token_id, tokenizer.bos_token), (writer.add_eos_token_id, tokenizer.eos_token),
                       (writer.add_pad_token_id, tokenizer.pad_token)):
        if token is not None:
            add(vocab[token])
    writer.add_add_bos_token(False)           # the course tokenizer adds no special tokens when encoding
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(gguf_chat_template(tokenizer.chat_template))


def write_gguf(model, tokenizer, path: Path | str, qtype: str = "Q8_0", name: str = "course-lm") -> Path:
    """Write a Llama-style course model and its tokenizer to a ``.gguf`` file, as llama.cpp's
    ``convert_hf_to_gguf.py`` (and ``llama-quantize``) would.

    Args:
        model: a :class:`~course_lib.language_model.CourseLMForCausalLM` of Llama style (RMSNorm,
            SwiGLU, RoPE, no biases).
        tokenizer: its ``transformers`` byte-level BPE tokenizer, ``len(tokenizer) == vocab_size``
            (the course tokenizer).
        path: the file to write (its folder is created).
        qtype: ``"F32"``, ``"F16"``, ``"Q8_0"``, ``"Q4_0"`` or ``"Q4_K"``: how matrices are stored
            (see :func:`quantize_gguf_tensor`: norms stay float32, a matrix whose rows are not whole
            blocks becomes float16).
        name: ``general.name``.

    The file holds architecture ``llama`` with its metadata (context, embedding and feed-forward
    lengths, block count, head counts, key/value lengths, RoPE base and dimensions, RMSNorm epsilon,
    vocabulary size, file type), the tokenizer (:func:`gguf_chat_template`) and the tensors under
    llama.cpp's names, q and k rows permuted (:func:`llama_cpp_permute`); tied embeddings are written
    once (no ``output.weight``). Run it with llama.cpp::

        llama-completion -m course.gguf -p "Once upon a time" -n 32 --temp 0 -no-cnv

    (:data:`LLAMA_CPP_COMMAND`; builds before llama.cpp split raw completion out of ``llama-cli``
    take the same arguments as ``llama-cli``), or load it with ``transformers``:
    ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name)``.

    Returns:
        The path written.
    """
    from gguf import GGMLQuantizationType, GGUFWriter

    from course_lib.language_model import course_config_to_llama

    if qtype not in GGUF_FILE_TYPES:
        raise ValueError(f"qtype must be one of {sorted(GGUF_FILE_TYPES)}, got {qtype!r}")
    config = model.config
    course_config_to_llama(config)            # refuses a model that is not Llama style
    if config.attention_bias or config.mlp_bias:
        raise ValueError("llama.cpp's llama architecture has no biases: attention_bias and mlp_bias must be False")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(GGUF_FILE_TYPES[qtype])
    writer.add_quantization_version(2)
    _add_tokenizer(writer, tokenizer, config.vocab_size)

    for param_name, weight in model.state_dict().items():
        if param_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if param_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in param_name else config.num_key_value_heads
            weight = llama_cpp_permute(weight, heads)
        kind, data = quantize_gguf_tensor(weight, qtype)
        # quantized bytes go in as raw uint8 rows: gguf works out the logical shape from the type
        writer.add_tensor(_gguf_tensor_name(param_name), data.numpy(), raw_dtype=GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
# == end of part B ==
