"""Wire format of the grading door: plain data as JSON, tensors as safetensors. Never pickle.

A value is encoded to ``(header, blob)``: ``header`` is JSON in which every tensor is replaced by
``{"__tensor__": key, "device": "cuda:0"}`` and ``blob`` holds the tensors by key. Supported:
``None``, ``bool``, ``int``, ``float`` (NaN and infinities too), ``str``, ``bytes``, ``list``, ``tuple``,
``dict`` with ``str`` keys, and dense ``torch.Tensor`` (exactly that type, or ``nn.Parameter``).
Anything else raises :class:`CodecError`, so an object with a lying ``__eq__`` cannot cross.

Models travel one way only, from the grader to the submission (``decode(..., models=True)`` in the
sandbox child): a ``transformers.PreTrainedModel`` of a class defined in ``transformers`` or
``course_lib`` crosses as its class name, its config (JSON) and its state dict (safetensors), and is
rebuilt on the other side from that trusted class with the dtype, attention implementation and mode
(train/eval) it had. The grader never
decodes a model, so a submission cannot make it build one.

What the grader reads is bounded: :func:`read_message` refuses a message over its size limit before
reading it, and :func:`decode` a JSON header over ``MAX_HEADER_BYTES``, more tensors than
``MAX_TENSORS``, and a decoding that uses more than ``cpu_seconds`` of CPU (a forged reply of
millions of tiny items cannot stall or swell the grader).
"""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any, BinaryIO

import importlib

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors


class CodecError(TypeError):
    """A value that cannot cross the door."""


MODEL_PACKAGES = ("transformers", "course_lib")  # where a model's class may come from
MAX_HEADER_BYTES = 16 << 20  # the JSON part of a message (tensors travel in the blob)
MAX_TENSORS = 100_000
DECODE_CPU_SECONDS = 10.0  # CPU time the grader spends decoding one message, at most


def _model_class_name(model) -> str | None:
    """``"module:QualName"`` of a model that may cross, or None for anything else."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return None
    cls = type(model)
    if not isinstance(model, PreTrainedModel) or cls.__module__.split(".")[0] not in MODEL_PACKAGES:
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def _build_model(spec: dict, state: dict[str, torch.Tensor]):
    """The model that :func:`encode` described by ``spec``, with the weights in ``state``."""
    from transformers import PreTrainedModel

    module_name, _, qualname = spec["__model__"].partition(":")
    if module_name.split(".")[0] not in MODEL_PACKAGES:
        raise CodecError(f"a model of class {spec['__model__']} may not cross")
    cls = getattr(importlib.import_module(module_name), qualname)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise CodecError(f"{spec['__model__']} is not a transformers model class")
    config = cls.config_class.from_dict(spec["config"])
    if spec.get("attn_implementation"):
        config._attn_implementation = str(spec["attn_implementation"])
    model = cls(config)
    floating = [t for t in state.values() if t.is_floating_point()]
    if floating:  # the parameters' dtype as sent (a float64 model stays float64)
        model.to(floating[0].dtype)
    model.load_state_dict(state, strict=True)
    return model.to(state[next(iter(state))].device if state else "cpu").train(spec["training"])


def encode(value: Any) -> bytes:
    """One message: 4-byte header length, JSON header, 8-byte blob length, safetensors blob."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(v):
        if v is None or type(v) in (bool, int, float, str):
            return v
        if type(v) is bytes:
            return {"__bytes__": base64.b64encode(v).decode("ascii")}
        if type(v) in (list, tuple):
            items = [walk(x) for x in v]
            return items if type(v) is list else {"__tuple__": items}
        if type(v) is dict:
            if not all(type(k) is str for k in v):
                raise CodecError("dict keys must be str")
            if {"__tensor__", "__tuple__", "__bytes__", "__model__"} & v.keys():
                raise CodecError("reserved dict key")
            return {k: walk(x) for k, x in v.items()}
        if type(v) in (torch.Tensor, torch.nn.Parameter):
            if v.layout != torch.strided:
                raise CodecError(f"only dense tensors cross the door, got layout {v.layout}")
            key = f"t{len(tensors)}"
            tensors[key] = v.detach().to("cpu").contiguous().clone()
            return {"__tensor__": key, "device": str(v.device)}
        model_class = _model_class_name(v)
        if model_class is not None:
            config = json.loads(v.config.to_json_string(use_diff=False))
            return {"__model__": model_class, "config": config, "training": v.training,
                    "attn_implementation": getattr(v.config, "_attn_implementation", None),
                    "state": {k: walk(t) for k, t in v.state_dict().items()}}
        raise CodecError(f"cannot send a value of type {type(v).__module__}.{type(v).__qualname__}")

    header = json.dumps(walk(value)).encode()
    blob = save_tensors(tensors) if tensors else b""
    return struct.pack(">I", len(header)) + header + struct.pack(">Q", len(blob)) + blob


def decode(message: bytes, *, map_device: str | None = None, models: bool = False,
           cpu_seconds: float = DECODE_CPU_SECONDS) -> Any:
    """Inverse of :func:`encode`. ``map_device`` overrides where tensors land (else their origin);
    ``models`` allows models in the message (only the sandboxed side sets it). Raises
    :class:`CodecError` for a malformed message, one beyond the limits above, or after
    ``cpu_seconds`` of this thread's CPU time."""
    deadline = time.thread_time() + cpu_seconds
    if len(message) < 12:
        raise CodecError("message too short")
    (n_header,) = struct.unpack(">I", message[:4])
    if n_header > MAX_HEADER_BYTES or len(message) < 12 + n_header:
        raise CodecError(f"header of {n_header} bytes (the limit is {MAX_HEADER_BYTES}, the message {len(message)})")
    header = json.loads(message[4:4 + n_header])
    (n_blob,) = struct.unpack(">Q", message[4 + n_header:12 + n_header])
    blob = message[12 + n_header:12 + n_header + n_blob]
    if n_blob and len(blob) >= 8 and struct.unpack("<Q", blob[:8])[0] > MAX_HEADER_BYTES:
        raise CodecError("tensor table too large")
    tensors = load_tensors(blob) if n_blob else {}
    if len(tensors) > MAX_TENSORS:
        raise CodecError(f"{len(tensors)} tensors (the limit is {MAX_TENSORS})")
    seen = [0]

    def walk(v):
        seen[0] += 1
        if seen[0] % 4096 == 0 and time.thread_time() > deadline:
            raise CodecError(f"decoding took more than {cpu_seconds:g} s of CPU")
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            if "__tensor__" in v:
                device = map_device or str(v["device"])
                if device.startswith("cuda") and not torch.cuda.is_available():
                    device = "cpu"
                return tensors[v["__tensor__"]].to(device)
            if "__tuple__" in v:
                return tuple(walk(x) for x in v["__tuple__"])
            if "__bytes__" in v:
                return base64.b64decode(v["__bytes__"])
            if "__model__" in v:
                if not models:
                    raise CodecError("a model may not cross in this direction")
                return _build_model(v, walk(v["state"]))
            return {k: walk(x) for k, x in v.items()}
        return v

    try:
        return walk(header)
    except CodecError:
        raise
    except (KeyError, TypeError, AttributeError, RecursionError) as err:
        raise CodecError(f"malformed message ({type(err).__name__})") from None


def frame(payload: bytes) -> bytes:
    """``payload`` with its 8-byte length prefix, as :func:`read_message` expects it."""
    return struct.pack(">Q", len(payload)) + payload


def read_message(stream: BinaryIO, *, max_bytes: int = 1 << 31) -> bytes:
    """Read one length-prefixed message from ``stream``; ``EOFError`` if it ends first,
    :class:`CodecError` (before reading it) if it announces more than ``max_bytes``."""
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise EOFError("the other side closed the door")
    (n,) = struct.unpack(">Q", prefix)
    if n > max_bytes:
        raise CodecError(f"message of {n} bytes is larger than the limit {max_bytes}")
    payload = stream.read(n)
    if len(payload) < n:
        raise EOFError("the other side closed the door mid-message")
    return payload
