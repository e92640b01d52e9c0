"""Random-weight models built from configs, saved to disk, then loaded through the same
`from_pretrained` / `load_model` path as real weights. Nothing is downloaded.

- `build_tiny_*(path)`: tiny versions for the demo profile and the tests. They run inside the model
  replica (its runtime_env has the libraries) and cache by path. Their outputs are noise: every
  result says `untrained: true`.
- `build_sdxl` / `build_zimage` / `build_whisper(out, tiny, dtype)`: the same architectures at their
  REAL size (real configs) or tiny; `bench/gpu/models.py` uses them to measure real-size loading.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
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
    """A 2-layer Llama with a word-level tokenizer over a few sentences, and a chat template."""
    return _cached(Path(path or default_cache() / "llm"), "llm", lambda p: _build_tiny_llm(p, seed))


def _build_tiny_llm(path: Path, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    # Word-level vocabulary: an untrained model then streams whole words, not invalid UTF-8 bytes.
    fast = _word_level(sorted(set(_CORPUS.split()) | {"assistant", "user", "system", ":"}), (
        "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<s> assistant : {% endif %}"
    ))
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)


def _cached(path: Path, what: str, build) -> Path:
    """Build into a temporary sibling, then rename: a replica killed mid-build leaves no half model,
    and of two replicas building at once, the second to finish keeps the first one's build."""
    if _ready(path):
        return path
    shutil.rmtree(path, ignore_errors=True)  # an unfinished or older-format build
    tmp = path.with_name(path.name + f".part-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    _mark(tmp, what)
    try:
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _ready(path):
            raise
    return path


def _tiny(name: str, build, path: Path | str | None, seed: int) -> Path:
    """The tiny version of `build`'s architecture, cached under `path` (default: the demo cache)."""
    import torch

    torch.manual_seed(seed)
    return _cached(Path(path or default_cache() / name), name, lambda p: build(p, tiny=True, dtype=torch.float32))


def build_tiny_sdxl(path: Path | str | None = None, seed: int = 0) -> Path:
    return _tiny("sdxl", build_sdxl, path, seed)


def build_tiny_zimage(path: Path | str | None = None, seed: int = 0) -> Path:
    return _tiny("zimage", build_zimage, path, seed)


def build_tiny_whisper(path: Path | str | None = None, seed: int = 0) -> Path:
    """A 2-layer random-weight Whisper checkpoint that whisper.load_model reads; returns the .pt path."""
    return _tiny("whisper", build_whisper, path, seed) / "model.pt"


def word_tokenizer(words: int = 1000):
    """A word-level fast tokenizer (no download); ids stay below every model's vocab size."""
    return _word_level([f"w{i}" for i in range(words)] + (_CORPUS + " a photo of an astronaut riding a horse on mars").split(), (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    ))


def _word_level(words: list[str], chat_template: str):
    """A fast tokenizer over whole words (ids in order of first appearance), joined with spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in ["<unk>", "<s>", "</s>", "<pad>", *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = chat_template
    return fast


def clip_tokenizer(path: Path):
    """CLIPTokenizer from a byte-level vocab written here (the real one is 49408 BPE tokens)."""
    from transformers import CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    # GPT-2's byte -> printable-unicode table, which CLIP's BPE vocabulary is written in.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), pad_token="<|endoftext|>",
                         model_max_length=77)


# Tiny VAEs keep the real downsampling factor (4 blocks: 8x), so width/height rules match the real
# models: multiples of 8 for SDXL, 16 for Z-Image (VAE 8x times its 2x2 patches).
_TINY_VAE = dict(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=32)


def build_sdxl(out: Path, tiny: bool, dtype) -> None:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if tiny:
        unet = dict(block_out_channels=(32, 64), layers_per_block=1, transformer_layers_per_block=(1, 1),
                    attention_head_dim=(2, 4), cross_attention_dim=64, projection_class_embeddings_input_dim=80,
                    addition_time_embed_dim=8, sample_size=32, norm_num_groups=32,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        te1 = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
        te2 = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
        vae = dict(_TINY_VAE, latent_channels=4, sample_size=64)
    else:  # stabilityai/stable-diffusion-xl-base-1.0
        unet = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, projection_class_embeddings_input_dim=2816,
                    addition_time_embed_dim=256, sample_size=128,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
        te1 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   projection_dim=768, hidden_act="quick_gelu")
        te2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   projection_dim=1280, hidden_act="gelu")
        vae = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=1024, scaling_factor=0.13025)
    unet_model = UNet2DConditionModel(in_channels=4, out_channels=4, addition_embed_type="text_time",
                                      use_linear_projection=True, **unet)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **te1))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **te2))
    vae_model = AutoencoderKL(in_channels=3, out_channels=3, **vae)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   timestep_spacing="leading", steps_offset=1)
    tok = clip_tokenizer(out / "_tok")
    pipe = StableDiffusionXLPipeline(vae=vae_model, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tok, tokenizer_2=tok, unet=unet_model, scheduler=sched)
    pipe.to(dtype=dtype).save_pretrained(out)
    shutil.rmtree(out / "_tok", ignore_errors=True)


def build_zimage(out: Path, tiny: bool, dtype) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    if tiny:
        tr = dict(dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[8, 4, 4])
        te = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=8)
        vae = dict(_TINY_VAE)
    else:  # Tongyi-MAI/Z-Image-Turbo: 6B single-stream DiT, Qwen3-4B text encoder, 16-channel VAE
        tr = dict(dim=3840, n_layers=30, n_refiner_layers=2, n_heads=30, n_kv_heads=30, cap_feat_dim=2560,
                  axes_dims=[32, 48, 48])
        te = dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128)
        vae = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4)
    transformer = ZImageTransformer2DModel(in_channels=16, **tr)
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0, **te))
    vae_model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, scaling_factor=0.3611,
                              shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, **vae)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = ZImagePipeline(scheduler=sched, vae=vae_model, text_encoder=text_encoder, tokenizer=word_tokenizer(),
                          transformer=transformer)
    pipe.to(dtype=dtype).save_pretrained(out)


def build_whisper(out: Path, tiny: bool, dtype) -> None:
    import torch
    import whisper
    from whisper.model import ModelDimensions

    if tiny:
        dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                               n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=2)
    else:  # large-v3
        dims = ModelDimensions(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                               n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32)
    model = whisper.model.Whisper(dims)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": asdict(dims), "model_state_dict": {k: v.to(dtype) for k, v in model.state_dict().items()}},
               out / "model.pt")
