"""A tiny random-weight LLaVA-style projector GGUF (``mmproj``) for the embedded SmolLM2-135M.

No vision GGUF ships with localrt, so the local image path (:mod:`localrt.engines.llm_vision`) is
exercised with this stand-in: a 2-layer, 32-wide ViT over 28x28 images (2x2 patches of 14 px, so an
image is 4 tokens) and an MLP projector into the model's 576-wide embeddings, written with a minimal
GGUF v3 writer (no extra package). Its weights are random, so what the model says about an image means
nothing: it proves the plumbing (libmtmd loads the projector, tokenizes a prompt with a media marker,
encodes the image, the context holds it, generation goes on after it), not the vision.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_ALIGN = 32
_U32, _F32, _BOOL, _STR, _ARR = 4, 6, 7, 8, 9
N_EMBD, N_FF, N_HEAD, N_LAYER, IMAGE, PATCH = 32, 64, 2, 2, 28, 14
TEXT_EMBD = 576  # SmolLM2-135M's embedding width
IMAGE_TOKENS = (IMAGE // PATCH) ** 2


def _str(s: str) -> bytes:
    data = s.encode()
    return struct.pack("<Q", len(data)) + data


def _kv(key: str, value: object) -> bytes:
    out = _str(key)
    if isinstance(value, bool):
        return out + struct.pack("<IB", _BOOL, value)
    if isinstance(value, int):
        return out + struct.pack("<II", _U32, value)
    if isinstance(value, float):
        return out + struct.pack("<If", _F32, value)
    if isinstance(value, str):
        return out + struct.pack("<I", _STR) + _str(value)
    if isinstance(value, list):  # of floats
        return out + struct.pack("<IIQ", _ARR, _F32, len(value)) + struct.pack(f"<{len(value)}f", *value)
    raise TypeError(value)


def _tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """name -> float32 array whose numpy shape is ggml's ``ne`` reversed."""

    def w(*ne: int) -> np.ndarray:
        return (rng.standard_normal(tuple(reversed(ne))) * 0.02).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, np.float32)

    t = {
        "v.patch_embd.weight": w(PATCH, PATCH, 3, N_EMBD),
        "v.position_embd.weight": w(N_EMBD, IMAGE_TOKENS),
        "v.pre_ln.weight": ones(N_EMBD),
        "v.pre_ln.bias": zeros(N_EMBD),
    }
    for i in range(N_LAYER):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t[f"v.blk.{i}.{name}.weight"] = w(N_EMBD, N_EMBD)
            t[f"v.blk.{i}.{name}.bias"] = zeros(N_EMBD)
        for name in ("ln1", "ln2"):
            t[f"v.blk.{i}.{name}.weight"] = ones(N_EMBD)
            t[f"v.blk.{i}.{name}.bias"] = zeros(N_EMBD)
        t[f"v.blk.{i}.ffn_up.weight"] = w(N_EMBD, N_FF)
        t[f"v.blk.{i}.ffn_up.bias"] = zeros(N_FF)
        t[f"v.blk.{i}.ffn_down.weight"] = w(N_FF, N_EMBD)
        t[f"v.blk.{i}.ffn_down.bias"] = zeros(N_EMBD)
    t["mm.0.weight"] = w(N_EMBD, TEXT_EMBD)
    t["mm.0.bias"] = zeros(TEXT_EMBD)
    t["mm.2.weight"] = w(TEXT_EMBD, TEXT_EMBD)
    t["mm.2.bias"] = zeros(TEXT_EMBD)
    return t


def write_tiny_mmproj(path: Path, seed: int = 0) -> Path:
    kvs = {
        "general.architecture": "clip",
        "general.name": "localrt tiny test projector",
        "clip.projector_type": "mlp",
        "clip.has_vision_encoder": True,
        "clip.vision.embedding_length": N_EMBD,
        "clip.vision.feed_forward_length": N_FF,
        "clip.vision.block_count": N_LAYER,
        "clip.vision.attention.head_count": N_HEAD,
        "clip.vision.attention.layer_norm_epsilon": 1e-6,
        "clip.vision.projection_dim": TEXT_EMBD,
        "clip.vision.image_size": IMAGE,
        "clip.vision.patch_size": PATCH,
        "clip.vision.image_mean": [0.5, 0.5, 0.5],
        "clip.vision.image_std": [0.5, 0.5, 0.5],
        "clip.use_gelu": True,
    }
    tensors = _tensors(np.random.default_rng(seed))
    infos, blobs, offset = b"", b"", 0
    for name, array in tensors.items():
        ne = tuple(reversed(array.shape))
        infos += _str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
        infos += struct.pack("<IQ", 0, offset)  # GGML_TYPE_F32
        data = array.tobytes()
        pad = -len(data) % _ALIGN
        blobs += data + b"\0" * pad
        offset += len(data) + pad
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    header += b"".join(_kv(k, v) for k, v in kvs.items()) + infos
    header += b"\0" * (-len(header) % _ALIGN)
    path.write_bytes(header + blobs)
    return path
