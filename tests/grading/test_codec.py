"""The door's wire format: what crosses, what is refused, and models crossing one way only."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grading import codec


def test_plain_data_and_tensors_round_trip_exactly():
    value = {"a": [1, 2.5, math.inf, None, True, "x", b"\x00\xff"], "t": (torch.arange(6.0).view(2, 3),),
             "half": torch.ones(3, dtype=torch.bfloat16)}
    back = codec.decode(codec.encode(value))
    assert back["a"][:3] == [1, 2.5, math.inf] and back["a"][3:] == [None, True, "x", b"\x00\xff"]
    assert isinstance(back["t"], tuple) and torch.equal(back["t"][0], value["t"][0])
    assert back["half"].dtype == torch.bfloat16


def test_objects_and_reserved_keys_are_refused():
    class Liar:
        def __eq__(self, other):
            return True

    for value in (Liar(), {"__model__": "x"}, {1: 2}, torch.nn.Linear(2, 2)):
        with pytest.raises(codec.CodecError):
            codec.encode(value)


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).eval()


def test_a_transformers_model_crosses_to_the_sandbox_side_with_its_weights_and_mode():
    model = _tiny_llama()
    message = codec.encode({"model": model})
    rebuilt = codec.decode(message, models=True)["model"]
    assert type(rebuilt) is LlamaForCausalLM and not rebuilt.training
    assert rebuilt.config.num_key_value_heads == 2
    input_ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        assert torch.equal(rebuilt(input_ids).logits, model(input_ids).logits)


def test_the_grader_side_refuses_a_model():
    message = codec.encode(_tiny_llama())
    with pytest.raises(codec.CodecError, match="may not cross"):
        codec.decode(message)


def _with_header(message: bytes, edit) -> bytes:
    """``message`` with its JSON header changed by ``edit`` (what a forged request would carry)."""
    (n,) = struct.unpack(">I", message[:4])
    header = json.dumps(edit(json.loads(message[4:4 + n]))).encode()
    return struct.pack(">I", len(header)) + header + message[4 + n:]


@pytest.mark.parametrize("forged", ["subprocess:Popen", "transformers:AutoTokenizer", "course_lib.cache:Path"])
def test_a_model_of_a_class_that_is_not_a_course_or_transformers_model_is_refused(forged):
    message = _with_header(codec.encode(_tiny_llama()), lambda h: {**h, "__model__": forged})
    with pytest.raises(codec.CodecError):
        codec.decode(message, models=True)


def test_a_model_keeps_its_dtype_and_attention_implementation_across_the_door():
    model = _tiny_llama().double()
    model.set_attn_implementation("eager")
    rebuilt = codec.decode(codec.encode(model), models=True)
    assert next(rebuilt.parameters()).dtype == torch.float64
    assert rebuilt.config._attn_implementation == "eager"
    input_ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        assert torch.equal(rebuilt(input_ids).logits, model(input_ids).logits)
