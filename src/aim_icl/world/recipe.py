"""The world's tiny MLLM: a real `LlavaForConditionalGeneration` (Llama LM, CLIP vision tower) and `LlavaProcessor`.

~1M parameters: LM width 128, 4 layers; CLIP width 96, 3 layers, patch 8 on 32x32 images -> 16 image tokens.
Input and output embeddings are tied (copying a token from the context is then reading its own embedding back).
The processor uses a plain (chat-free) prompt: `[context] <image> text`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from aim_icl.world.scene import IMAGE_SIZE
from aim_icl.world.tokenizer import build_tokenizer
from aim_icl.world.vocab import IMAGE

PATCH = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2  # what the processor widens one image marker into


@dataclass(frozen=True)
class WorldModelConfig:
    lm_width: int = 128
    lm_layers: int = 4
    lm_heads: int = 4
    lm_mlp: int = 256
    vision_width: int = 96
    vision_layers: int = 3
    vision_heads: int = 3
    vision_mlp: int = 192
    max_positions: int = 512


def build_processor() -> LlavaProcessor:
    tokenizer = build_tokenizer()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor,
        tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",  # drop CLS: 16 image tokens
        num_additional_image_tokens=1,
        image_token=IMAGE,
    )


def build_model(processor: LlavaProcessor, config: WorldModelConfig | None = None, seed: int = 0):
    """A freshly initialised world model whose ids agree with `processor`."""
    tok = processor.tokenizer
    c = config or WorldModelConfig()
    text = dict(
        model_type="llama",
        vocab_size=len(tok),
        hidden_size=c.lm_width,
        intermediate_size=c.lm_mlp,
        num_hidden_layers=c.lm_layers,
        num_attention_heads=c.lm_heads,
        num_key_value_heads=c.lm_heads,
        max_position_embeddings=c.max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=c.vision_width,
        intermediate_size=c.vision_mlp,
        num_hidden_layers=c.vision_layers,
        num_attention_heads=c.vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    llava = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=tok.convert_tokens_to_ids(IMAGE),
        image_seq_length=IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(llava).float()
