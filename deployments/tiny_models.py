"""Builders of tiny random-weight models for the demo profile and the tests: real model classes
from configs, saved to disk, then loaded through the same `from_pretrained` path as real weights.
Nothing is downloaded. Outputs of these models are noise: every result says `untrained: true`.

Each builder runs inside the model replica (its runtime_env has the libraries) and caches by path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

_CORPUS = (
    "the quick brown fox jumps over the lazy dog . hello world ! how are you today ? "
    "a tiny model says random things , one token at a time . gpu orchestrator demo profile . "
)


def default_cache() -> Path:
    return Path(os.environ.get("GPU_ORCH_HOME", Path.home() / ".gpu-orch")) / "tiny-models"


def _ready(path: Path) -> bool:
    return (path / "BUILT").exists()


def _mark(path: Path, what: str) -> None:
    (path / "BUILT").write_text(json.dumps({"model": what, "untrained": True}))


def build_tiny_llm(path: Path | str | None = None, seed: int = 0) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on a few sentences, and a chat template."""
    path = Path(path or default_cache() / "llm")
    if _ready(path):
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    # Word-level vocabulary: an untrained model then streams whole words, not invalid UTF-8 bytes.
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    words = sorted(set(_CORPUS.split()) | {"assistant", "user", "system", ":"})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(special + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = (
        "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<s> assistant : {% endif %}"
    )
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    _mark(path, "llm")
    return path
