"""The course's decoder-only language model, as a real ``transformers`` model.

:class:`CourseLMConfig` (a ``PreTrainedConfig``, ``model_type="course_lm"``) and
:class:`CourseLMForCausalLM` (a ``PreTrainedModel`` with ``GenerationMixin``) stack Chapter 3's
:func:`~course_lib.transformer.decoder_block` (so in student mode an unfinished exercise makes the
model raise ``NotImplementedError``). Being a ``transformers`` model, it works unchanged with
``generate`` (with a KV cache, ``DynamicCache``), ``save_pretrained``/``from_pretrained``,
``AutoModelForCausalLM``, ``peft`` and ``trl``.

One config covers both families of decoder-only models:

========================  =====================  ====================
option                    GPT-2 style            Llama style
========================  =====================  ====================
``norm_type``             ``"layernorm"``        ``"rmsnorm"``
``hidden_act``            ``"gelu_tanh"``        ``"swiglu"``
``position_embedding``    ``"learned"``          ``"rope"``
``num_key_value_heads``   ``num_attention_heads`` fewer (GQA)
biases                    yes                    no
tied embeddings           yes                    optional
========================  =====================  ====================

:func:`course_lm_config` gives the course's sizes (``"cpu"``: about 4M parameters, for the book and
the pretraining chapter on a laptop; ``"gpu"``: about 100M parameters) in either style.
Attention is the course's own (``attn_implementation="eager"``, the default: Chapter 2's
``scaled_dot_product_attention``, your code in student mode) or torch's fused
``F.scaled_dot_product_attention`` (``attn_implementation="sdpa"``).

Weight converters (:func:`from_llama`, :func:`to_llama`, :func:`from_gpt2`, :func:`to_gpt2`) move a
Hugging Face ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` into the course's model and back with the
same logits.
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

from course_lib import transformer
from course_lib.transformer import (ACTIVATIONS, ARCHITECTURE_KEYS, ATTN_IMPLEMENTATIONS, NORM_TYPES,
                                    POSITION_EMBEDDING_TYPES, FeedForward, LayerNorm, LayerWeights, RMSNorm)


@strict
class CourseLMConfig(PreTrainedConfig):
    """Architecture of :class:`CourseLMForCausalLM` (defaults: the ``"cpu"`` size, Llama style).

    ``head_dim`` defaults to ``hidden_size // num_attention_heads`` and ``num_key_value_heads`` to
    ``num_attention_heads``. :meth:`architecture` gives the plain dict that Chapter 3's exercises take.
    """

    model_type = "course_lm"

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = 2
    head_dim: int | None = None
    max_position_embeddings: int = 512
    norm_type: str = "rmsnorm"
    norm_eps: float = 1e-6
    hidden_act: str = "swiglu"
    position_embedding_type: str = "rope"
    rope_theta: float = 10000.0
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.rope_theta = float(self.rope_theta)
        self.norm_eps = float(self.norm_eps)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict``'s validation: the options exist and the heads fit."""
        for name, value, choices in (("norm_type", self.norm_type, NORM_TYPES),
                                     ("hidden_act", self.hidden_act, ACTIVATIONS),
                                     ("position_embedding_type", self.position_embedding_type,
                                      POSITION_EMBEDDING_TYPES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    def architecture(self) -> dict:
        """The architecture as a plain dict (the ``config`` of Chapter 3's exercises)."""
        return {k: getattr(self, k) for k in ARCHITECTURE_KEYS}


SIZES = {
    # ~4M parameters with the course's 4096-token vocabulary: trains on a laptop CPU.
    "cpu": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512),
    # ~100M parameters (GPT-2 small's width, 16 layers): a single-GPU pretraining run.
    "gpu": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=16, num_attention_heads=12,
                num_key_value_heads=4, max_position_embeddings=1024),
}
STYLES = {
    "llama": dict(norm_type="rmsnorm", norm_eps=1e-6, hidden_act="swiglu", position_embedding_type="rope",
                  attention_bias=False, mlp_bias=False),
    "gpt2": dict(norm_type="layernorm", norm_eps=1e-5, hidden_act="gelu_tanh", position_embedding_type="learned",
                 attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
}


def course_lm_config(size: str = "cpu", style: str = "llama", **overrides) -> CourseLMConfig:
    """The course's configuration of ``size`` (``"cpu"`` or ``"gpu"``) in ``style`` (``"llama"`` or
    ``"gpt2"``; GPT-2 style has as many key/value heads as query heads and a 4x MLP);
    ``overrides`` win (``vocab_size=len(tokenizer)``, ``attn_implementation="sdpa"``, ...)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {sorted(STYLES)}, got {style!r}")
    settings = {**SIZES[size], **STYLES[style]}
    if style == "gpt2":
        settings.update(num_key_value_heads=settings["num_attention_heads"],
                        intermediate_size=4 * settings["hidden_size"])
    return CourseLMConfig(**{**settings, **overrides})


class CourseLMAttention(nn.Module):
    """The projections of one block's attention (Llama's names and shapes). There is no forward
    pass of its own: :func:`~course_lib.transformer.decoder_block` applies them (via
    :func:`~course_lib.transformer.linear`, so that a LoRA-wrapped or quantised projection works)."""

    def __init__(self, config: CourseLMConfig):
        super().__init__()
        d, d_head, bias = config.hidden_size, config.head_dim, config.attention_bias
        self.q_proj = nn.Linear(d, config.num_attention_heads * d_head, bias=bias)
        self.k_proj = nn.Linear(d, config.num_key_value_heads * d_head, bias=bias)
        self.v_proj = nn.Linear(d, config.num_key_value_heads * d_head, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * d_head, d, bias=bias)


def _norm(config: CourseLMConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return RMSNorm(config.hidden_size, config.norm_eps)
    return LayerNorm(config.hidden_size, config.norm_eps)


class CourseLMBlock(GradientCheckpointingLayer):
    """One decoder block: its forward pass is :func:`~course_lib.transformer.decoder_block`
    (exercise 3.9) on this block's weights, reading and extending the KV cache of its layer."""

    def __init__(self, config: CourseLMConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.input_layernorm = _norm(config)
        self.self_attn = CourseLMAttention(config)
        self.post_attention_layernorm = _norm(config)
        self.mlp = FeedForward(config.hidden_size, config.intermediate_size, config.hidden_act, config.mlp_bias)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, cache: Cache | None = None) -> torch.Tensor:
        """``(batch, seq, d_model)`` -> ``(batch, seq, d_model)``; appends this step's keys and values
        to ``cache`` (a ``DynamicCache``) when one is given."""
        past_key = past_value = None
        if cache is not None and self.layer_idx < len(cache.layers) and cache.layers[self.layer_idx].is_initialized:
            layer = cache.layers[self.layer_idx]
            if layer.keys.numel():
                past_key, past_value = layer.keys, layer.values
        out, key, value = transformer.decoder_block(
            LayerWeights(self), hidden_states, position_ids, attention_mask, past_key, past_value,
            self.config._attn_implementation or "eager", config=self.config.architecture())
        if cache is not None:
            cache.update(key, value, self.layer_idx)
        return out


class CourseLMPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the ``transformers`` capabilities of the course's model."""

    config_class = CourseLMConfig
    config: CourseLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CourseLMBlock"]
    _supports_sdpa = True

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """``set_attn_implementation("sdpa")`` works: every block reads ``config._attn_implementation``
        on each call (transformers' own test reads the source and guesses otherwise)."""
        return True

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """``"eager"`` (the course's attention) unless ``"sdpa"`` is asked for; nothing else exists here."""
        if requested_attention is None:
            return "eager"
        if requested_attention not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {requested_attention!r}")
        return requested_attention

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (RMSNorm, LayerNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class CourseLMModel(CourseLMPreTrainedModel):
    """Embeddings, the stack of :class:`CourseLMBlock` and the final norm: hidden states out."""

    def __init__(self, config: CourseLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = (nn.Embedding(config.max_position_embeddings, config.hidden_size)
                                if config.position_embedding_type == "learned" else None)
        self.layers = nn.ModuleList(CourseLMBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = _norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        """``input_ids`` ``(batch, seq)`` (or ``inputs_embeds`` ``(batch, seq, d_model)``),
        ``attention_mask`` ``(batch, past_len + seq)`` of 1/0, ``position_ids`` ``(batch, seq)``
        (default: ``past_len, past_len + 1, ...``, as Llama) -> ``last_hidden_state`` and ``cache``."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        batch, seq = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        device = self.embed_tokens.weight.device
        past_len = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = (torch.arange(seq, device=device) + past_len).expand(batch, seq)
        weights = {"embed_tokens.weight": self.embed_tokens.weight}
        if self.embed_positions is not None:
            weights["embed_positions.weight"] = self.embed_positions.weight
        if inputs_embeds is None:
            hidden_states = transformer.embed(weights, input_ids, position_ids)
        else:
            hidden_states = inputs_embeds
            if self.embed_positions is not None:
                hidden_states = hidden_states + self.embed_positions(position_ids)
        if attention_mask is not None:
            if attention_mask.ndim != 2:
                raise ValueError(f"attention_mask must be (batch, past_len + seq) of 1/0, got shape "
                                 f"{tuple(attention_mask.shape)}")
            if bool(attention_mask.all()):
                attention_mask = None  # no padding: the causal mask alone (and fused kernels' fast path)
        elif past_len == 0 and seq > 1:  # padding-free rows may pack several sequences (Chapter 7)
            attention_mask = packed_attention_mask(position_ids.expand(batch, seq))
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_ids, attention_mask, cache=cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)


def packed_attention_mask(position_ids: torch.Tensor) -> torch.Tensor | None:
    """The attention mask of rows that pack several sequences without padding, or ``None`` when no row does.

    ``position_ids`` ``(batch, seq)``: a new sequence starts wherever a position is not the one before
    it plus 1 (``[0, 1, 2, 0, 1]`` holds two), as in Hugging Face's padding-free batches
    (``find_packed_sequence_indices``). Returns a ``(batch, 1, seq, seq)`` bool mask, ``True`` where a
    query may attend to a key: causal, and only within its own sequence (block-diagonal).
    """
    starts = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1
    sequence = starts.cumsum(-1)                                                     # (batch, seq) sequence index
    if not bool(sequence[:, -1].any()):
        return None
    seq = position_ids.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=position_ids.device).tril()
    return ((sequence[:, :, None] == sequence[:, None, :]) & causal)[:, None]


class CourseLMForCausalLM(CourseLMPreTrainedModel, GenerationMixin):
    """The course's language model: :class:`CourseLMModel` and an output layer (tied to the token
    embeddings when ``config.tie_word_embeddings``). ``labels`` ``(batch, seq)`` give the mean
    next-token cross-entropy (shifted inside, ``-100`` ignored), as every ``...ForCausalLM``."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: CourseLMConfig):
        super().__init__(config)
        self.model = CourseLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                **kwargs) -> CausalLMOutputWithPast:
        """Logits ``(batch, seq, vocab_size)`` (only the last ``logits_to_keep`` positions when it is
        > 0, as ``generate`` asks), the loss when ``labels`` are given, and the cache."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache)
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:  # transformers' ForCausalLMLoss: shift, float32, -100 ignored, num_items_in_batch
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)


# -- conversion from and to Hugging Face's Llama and GPT-2 (implemented) --------------------------------
LLAMA_ACTIVATIONS = {"silu": "swiglu"}
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def _special_tokens(config) -> dict:
    return {k: getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


def llama_config_to_course(config) -> CourseLMConfig:
    """A :class:`CourseLMConfig` with the architecture of a ``LlamaConfig`` (default RoPE only)."""
    rope = dict(config.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only default RoPE converts, got rope_type={rope.get('rope_type')!r}")
    if config.hidden_act not in LLAMA_ACTIVATIONS:
        raise ValueError(f"hidden_act={config.hidden_act!r} has no counterpart (Llama's gated MLP uses 'silu')")
    return CourseLMConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings, norm_type="rmsnorm", norm_eps=config.rms_norm_eps,
        hidden_act="swiglu", position_embedding_type="rope", rope_theta=rope.get("rope_theta", 10000.0),
        attention_bias=config.attention_bias, mlp_bias=config.mlp_bias,
        tie_word_embeddings=config.tie_word_embeddings, **_special_tokens(config))


def course_config_to_llama(config: CourseLMConfig):
    """The ``LlamaConfig`` of a Llama-style :class:`CourseLMConfig` (RMSNorm, SwiGLU, RoPE)."""
    from transformers import LlamaConfig

    style = (config.norm_type, config.hidden_act, config.position_embedding_type)
    if style != ("rmsnorm", "swiglu", "rope"):
        raise ValueError(f"only a Llama-style config (rmsnorm, swiglu, rope) converts to Llama, got {style}")
    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.norm_eps, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        attention_bias=config.attention_bias, mlp_bias=config.mlp_bias,
        tie_word_embeddings=config.tie_word_embeddings, **_special_tokens(config))


def from_llama(model) -> CourseLMForCausalLM:
    """A :class:`CourseLMForCausalLM` with the architecture and weights of a ``LlamaForCausalLM``
    (the parameter names are the same), in its dtype, on its device, in eval mode."""
    course = CourseLMForCausalLM(llama_config_to_course(model.config))
    course.load_state_dict(model.state_dict())
    return course.to(model.device, model.dtype).eval()


def to_llama(model: CourseLMForCausalLM):
    """A ``LlamaForCausalLM`` with the architecture and weights of a Llama-style course model."""
    from transformers import LlamaForCausalLM

    llama = LlamaForCausalLM(course_config_to_llama(model.config))
    llama.load_state_dict(model.state_dict())
    return llama.to(model.device, model.dtype).eval()


def gpt2_block_weights(block) -> dict[str, torch.Tensor]:
    """The weights of a Hugging Face ``GPT2Block`` under :func:`~course_lib.transformer.decoder_block`'s
    names. GPT-2's ``Conv1D`` stores ``(in, out)`` (``y = x @ W + b``), so each weight is transposed,
    and its fused ``c_attn`` is split into q, k and v."""
    d = block.ln_1.weight.shape[0]
    q, k, v = block.attn.c_attn.weight.detach().T.split(d)
    q_b, k_b, v_b = block.attn.c_attn.bias.detach().split(d)
    weights = {"input_layernorm.weight": block.ln_1.weight, "input_layernorm.bias": block.ln_1.bias,
               "self_attn.q_proj.weight": q, "self_attn.q_proj.bias": q_b,
               "self_attn.k_proj.weight": k, "self_attn.k_proj.bias": k_b,
               "self_attn.v_proj.weight": v, "self_attn.v_proj.bias": v_b,
               "self_attn.o_proj.weight": block.attn.c_proj.weight.T, "self_attn.o_proj.bias": block.attn.c_proj.bias,
               "post_attention_layernorm.weight": block.ln_2.weight, "post_attention_layernorm.bias": block.ln_2.bias,
               "mlp.fc_in.weight": block.mlp.c_fc.weight.T, "mlp.fc_in.bias": block.mlp.c_fc.bias,
               "mlp.fc_out.weight": block.mlp.c_proj.weight.T, "mlp.fc_out.bias": block.mlp.c_proj.bias}
    return {k: w.detach().contiguous() for k, w in weights.items()}


def gpt2_config_to_course(config) -> CourseLMConfig:
    """A GPT-2-style :class:`CourseLMConfig` with the architecture of a ``GPT2Config``."""
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if getattr(config, flag, False):
            raise ValueError(f"GPT-2 option {flag}=True has no counterpart in the course's model")
    if not getattr(config, "scale_attn_weights", True):
        raise ValueError("GPT-2 option scale_attn_weights=False has no counterpart in the course's model")
    if config.activation_function not in GPT2_ACTIVATIONS:
        raise ValueError(f"GPT-2 activation {config.activation_function!r} has no counterpart here")
    return CourseLMConfig(
        vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=config.n_inner or 4 * config.n_embd,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head, num_key_value_heads=config.n_head,
        max_position_embeddings=config.n_positions, norm_type="layernorm", norm_eps=config.layer_norm_epsilon,
        hidden_act=GPT2_ACTIVATIONS[config.activation_function], position_embedding_type="learned",
        attention_bias=True, mlp_bias=True, tie_word_embeddings=config.tie_word_embeddings,
        **_special_tokens(config))


def from_gpt2(model) -> CourseLMForCausalLM:
    """A GPT-2-style :class:`CourseLMForCausalLM` with the weights of a ``GPT2LMHeadModel``."""
    course = CourseLMForCausalLM(gpt2_config_to_course(model.config))
    gpt2 = model.transformer
    state = {"model.embed_tokens.weight": gpt2.wte.weight, "model.embed_positions.weight": gpt2.wpe.weight,
             "model.norm.weight": gpt2.ln_f.weight, "model.norm.bias": gpt2.ln_f.bias,
             "lm_head.weight": model.lm_head.weight}
    for i, block in enumerate(gpt2.h):
        state.update({f"model.layers.{i}.{k}": w for k, w in gpt2_block_weights(block).items()})
    course.load_state_dict({k: w.detach() for k, w in state.items()})
    return course.to(model.device, model.dtype).eval()


def to_gpt2(model: CourseLMForCausalLM):
    """A ``GPT2LMHeadModel`` with the weights of a GPT-2-style course model (LayerNorm, GELU or ReLU,
    learned positions, biases, as many key/value heads as query heads, ``head_dim * heads == d``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    style = (c.norm_type, c.position_embedding_type, c.attention_bias, c.mlp_bias, c.num_key_value_heads,
             c.head_dim * c.num_attention_heads)
    if style != ("layernorm", "learned", True, True, c.num_attention_heads, c.hidden_size) or c.hidden_act == "swiglu":
        raise ValueError("only a GPT-2-style config (layernorm, learned positions, biases, no GQA, no SwiGLU) "
                         "converts to GPT-2")
    activation = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[c.hidden_act]
    gpt2 = GPT2LMHeadModel(GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.max_position_embeddings, n_embd=c.hidden_size,
        n_layer=c.num_hidden_layers, n_head=c.num_attention_heads, n_inner=c.intermediate_size,
        activation_function=activation, layer_norm_epsilon=c.norm_eps, tie_word_embeddings=c.tie_word_embeddings,
        **_special_tokens(c)))
    course = model.model
    state = {"transformer.wte.weight": course.embed_tokens.weight, "transformer.wpe.weight": course.embed_positions.weight,
             "transformer.ln_f.weight": course.norm.weight, "transformer.ln_f.bias": course.norm.bias,
             "lm_head.weight": model.lm_head.weight}
    for i, block in enumerate(course.layers):
        attn, ln1, ln2, mlp = block.self_attn, block.input_layernorm, block.post_attention_layernorm, block.mlp
        prefix = f"transformer.h.{i}"
        state.update({
            f"{prefix}.ln_1.weight": ln1.weight, f"{prefix}.ln_1.bias": ln1.bias,
            f"{prefix}.attn.c_attn.weight": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).T,
            f"{prefix}.attn.c_attn.bias": torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]),
            f"{prefix}.attn.c_proj.weight": attn.o_proj.weight.T, f"{prefix}.attn.c_proj.bias": attn.o_proj.bias,
            f"{prefix}.ln_2.weight": ln2.weight, f"{prefix}.ln_2.bias": ln2.bias,
            f"{prefix}.mlp.c_fc.weight": mlp.fc_in.weight.T, f"{prefix}.mlp.c_fc.bias": mlp.fc_in.bias,
            f"{prefix}.mlp.c_proj.weight": mlp.fc_out.weight.T, f"{prefix}.mlp.c_proj.bias": mlp.fc_out.bias})
    gpt2.load_state_dict({k: w.detach().contiguous() for k, w in state.items()})
    return gpt2.to(model.device, model.dtype).eval()


AutoConfig.register("course_lm", CourseLMConfig, exist_ok=True)
AutoModelForCausalLM.register(CourseLMConfig, CourseLMForCausalLM, exist_ok=True)
