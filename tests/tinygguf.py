"""Tiny GGUF models for tests of model plumbing (registry, sharing, fetching): a one-layer llama of
random weights that llama.cpp loads in milliseconds, made with the `gguf` package. `pad` random bytes
after the tensors (llama.cpp reads tensors by offset and ignores them) make the file as many 512 KiB
parts long as a test needs, and give each seed its own SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np

EMBED, FFN, HEADS = 32, 64, 2
TOKENS = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]  # a byte-level vocabulary


def tiny_gguf(path: Path, pad: int = 0, seed: int = 0, chat_template: str = "") -> str:
    """Write a loadable tiny model at `path`, `pad` random bytes longer, with `chat_template` in its
    metadata when given; its SHA-256."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(EMBED)
    w.add_block_count(1)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(EMBED // HEADS)
    w.add_tokenizer_model("llama")
    w.add_token_list(TOKENS)
    w.add_token_scores([0.0] * len(TOKENS))
    w.add_token_types([2, 3, 3] + [6] * 256)  # unknown, control ×2, bytes
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    if chat_template:
        w.add_chat_template(chat_template)
    shapes = {"token_embd.weight": (len(TOKENS), EMBED), "output_norm.weight": (EMBED,),
              "output.weight": (len(TOKENS), EMBED), "blk.0.attn_norm.weight": (EMBED,),
              "blk.0.attn_q.weight": (EMBED, EMBED), "blk.0.attn_k.weight": (EMBED, EMBED),
              "blk.0.attn_v.weight": (EMBED, EMBED), "blk.0.attn_output.weight": (EMBED, EMBED),
              "blk.0.ffn_norm.weight": (EMBED,), "blk.0.ffn_gate.weight": (FFN, EMBED),
              "blk.0.ffn_up.weight": (FFN, EMBED), "blk.0.ffn_down.weight": (EMBED, FFN)}
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "ab") as f:
        f.write(rng.bytes(pad))
    return hashlib.sha256(path.read_bytes()).hexdigest()
