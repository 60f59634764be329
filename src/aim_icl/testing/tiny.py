"""Tiny, randomly initialised, *real* Hugging Face MLLMs and their real processors, built fully offline.

``build_tiny(family, seed)`` returns ``(model, processor)``: the family's real ``*ForConditionalGeneration``
class (float32, ``.eval()``, ~0.2-0.3M parameters, built in ~0.1 s, weights a function of ``seed``) and the
family's real processor class with its real PIL-backend image processor and a tiny BPE tokenizer (the real
tokenizer class, the checkpoints' special tokens at checkpoint-like positions, byte fallback so that any
text tokenizes). Config ids (image / boi / eoi / vision-start / pad / bos / eos, ``vocab_size ==
len(tokenizer)``) agree with the tokenizer and the processor's image-token counts agree with the model's.

Families (``FAMILIES``): ``llava``, ``llava_next``, ``qwen2_vl``, ``qwen2_5_vl``, ``idefics3``, ``smolvlm``,
``paligemma``, ``gemma3`` and the extras ``llava_onevision``, ``aya_vision``, ``mistral3``, ``qwen3_vl``,
``internvl`` (no ``gemma3n``).

``IMAGE_MARKER[family]`` is the text that places one image in a plain prompt. Every family has a chat
template (``processor.apply_chat_template``) modelled on the real one, except the base models
``llava_next`` and ``paligemma``. PaliGemma's processor puts the image tokens first and ``<bos>`` after the
last marker; Gemma 3's expands ``<start_of_image>`` to ``\\n\\n<start_of_image><image_soft_token>*16...``.

Overrides of ``build_tiny``: ``real_geometry=True`` (``llava_next``, ``qwen2_vl``, ``qwen2_5_vl``,
``qwen3_vl``) keeps the checkpoints' image geometry with tiny width/depth (a 672x672 image costs 2,928
LLaVA-Next tokens; 448x448 costs 256 Qwen2/2.5-VL tokens, 196 Qwen3-VL tokens); ``text_config={...}`` /
``vision_config={...}`` are merged into the sub-configs (keep the vision geometry, or the processor will
disagree with the model); any other keyword goes to the top-level config.

Caveat: the processors of the video-capable families (Qwen*-VL, SmolVLM, LLaVA-OneVision, InternVL) are
same-name subclasses that take no video processor (the real one needs torchvision), and Mistral 3's
``PixtralProcessor`` is imported against the PIL image module; without torchvision a saved copy of these
processors cannot be reloaded with ``AutoProcessor`` (models and tokenizers round-trip fine). Mistral 3 fails
(a transformers bug) on images that shrink to a single image token, i.e. at most 16x16 px here.

``python -m aim_icl.testing.tiny`` runs a self-check of every family.
"""

from __future__ import annotations

import functools
import importlib
import math
import sys
import time
import types
from importlib.util import find_spec

import numpy as np
import torch
import transformers as tf  # lazy: a family's modules are imported when it is first built
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from aim_icl.core.loading import image_only_processor

__all__ = ["FAMILIES", "IMAGE_MARKER", "build_tiny", "tiny_image"]


def _t(tokens: str) -> tuple[str, ...]:
    return tuple(tokens.split())


# ---------------------------------------------------------------------------------------------- tokenizers

_WORDS = _t(
    "the a an of and or to in on at for with from by as is are was were be been it its this that these those "
    "there here what which who where when why how yes no not do does can could will would should has have "
    "image images picture photo shows show see look looks describe caption question answer example examples "
    "user assistant system model you your i my me we they he she his her their one two three four five six "
    "seven eight nine ten zero number many count left right top bottom up down big small large little "
    "red green blue yellow black white orange brown pink purple gray color cat cats dog dogs bird car bus "
    "man woman person people boy girl tree sky water grass table chair road street house room food "
    "sitting standing holding wearing looking running eating playing riding next near front behind "
    "label class category true false same different other first second third last new old good bad "
    "USER ASSISTANT User Assistant Question Answer The What How Is A"
)


def _bpe(prefix: str, base: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab = ``base`` + the prefix closure of ``_WORDS`` (bare and ``prefix``-ed); merges = every split of a
    vocab token into two vocab tokens, shortest first. The leftmost piece of a word is always a prefix of it,
    so BPE always reaches the whole word; any other text falls back to characters / bytes."""
    toks = dict.fromkeys(base)
    for word in _WORDS:
        for w in (word, prefix + word):
            toks.update(dict.fromkeys(w[:i] for i in range(1, len(w) + 1)))
    merges = sorted(
        ((t[:i], t[i:]) for t in toks for i in range(1, len(t)) if t[:i] in toks and t[i:] in toks),
        key=lambda m: (len(m[0]) + len(m[1]), m),
    )
    return {t: i for i, t in enumerate(toks)}, merges


def _tokenizer(cls, style: str, head=(), tail=(), plain=(), **kwargs):
    """The real tokenizer class ``cls`` over a tiny BPE. ``style``: "byte" (GPT-2 / Qwen / Llama-3 / Cohere
    byte-level) or "spm" (Llama-2 / Gemma: "▁" word prefix and byte fallback). Special tokens: ``head`` take
    the first ids and ``tail`` the last ones, as in the checkpoints; ``plain`` tokens (added, not special) sit
    just before ``tail``. ``kwargs`` (``bos_token=...``, ``image_token=...``, ...) go to ``cls``."""
    if style == "byte":
        prefix, base = "Ġ", sorted(pre_tokenizers.ByteLevel.alphabet())
    else:
        prefix, base = "▁", [f"<0x{i:02X}>" for i in range(256)] + [chr(c) for c in range(33, 127)]
        base += ["▁", "\n", "\n\n"]
    vocab, merges = _bpe(prefix, [*head, *base])
    vocab.update({t: len(vocab) + i for i, t in enumerate([*plain, *tail])})
    if cls is tf.PreTrainedTokenizerFast:  # checkpoints without a model-specific class (Llama 3, Tekken)
        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        tok = cls(tokenizer_object=backend, **kwargs)
    else:
        tok = cls(vocab=vocab, merges=merges, **kwargs)
    named = {v for k, v in kwargs.items() if k.endswith("_token")}
    extra = [t for t in (*head, *tail) if t not in named]
    tok.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    tok.add_tokens(list(plain))
    moved = [t for t in (*head, *plain, *tail) if tok.convert_tokens_to_ids(t) != vocab[t]]
    assert not moved, f"added-token ids moved: {moved}"
    return tok


# ------------------------------------------------------------------------------------------ chat templates


def _chat_template(turn: str, end: str, image: str, gen: str, head: str = "") -> str:
    """Jinja chat template: ``head`` once, then per message ``turn`` (may use ``role``), the content (a string
    or a list of ``{"type": "text" | "image"}`` parts, images rendered as ``image``) and ``end``; ``gen`` is
    the generation prompt."""
    return (
        f"{head}{{% for m in messages %}}{{% set role = m['role'] %}}{turn}"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        f"{{% if c['type'] == 'image' %}}{image}{{% elif c['type'] == 'text' %}}{{{{ c['text'] }}}}"
        f"{{% endif %}}{{% endfor %}}{{% endif %}}{end}{{% endfor %}}"
        f"{{% if add_generation_prompt %}}{gen}{{% endif %}}"
    )


def _chatml(image: str, default_system: bool = False) -> str:
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    head = f"{{% if messages[0]['role'] != 'system' %}}{system}{{% endif %}}" if default_system else ""
    return _chat_template("<|im_start|>{{ role }}\n", "<|im_end|>\n", image, "<|im_start|>assistant\n", head)


_QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
_QWEN_TAIL = _t(
    "<|endoftext|> <|im_start|> <|im_end|> <|object_ref_start|> <|object_ref_end|> <|box_start|> <|box_end|> "
    "<|quad_start|> <|quad_end|> <|vision_start|> <|vision_end|> <|vision_pad|> <|image_pad|> <|video_pad|>"
)
_IDEFICS_TAIL = (
    *_t("<fake_token_around_image> <image> <end_of_utterance> <global-img>"),
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
)
_IDEFICS_TEMPLATE = _chat_template(
    "{{ role | capitalize }}{{ ':' if m['content'] is not string and m['content'][0]['type'] == 'image' "
    "else ': ' }}",
    "<end_of_utterance>\n",
    "<image>",
    "Assistant:",
    head="<|im_start|>",
)
_GEMMA_HEAD = _t("<pad> <eos> <bos> <unk> <mask> <start_of_turn> <end_of_turn>")
_GEMMA_TEMPLATE = _chat_template(
    "<start_of_turn>{{ 'model' if role == 'assistant' else role }}\n",
    "<end_of_turn>\n",
    "<start_of_image>",
    "<start_of_turn>model\n",
    head="{{ bos_token }}",
)


# -------------------------------------------------------------------------------------- processor helpers


_image_only = functools.cache(image_only_processor)


def _pixtral_processor():
    """``PixtralProcessor``: its module imports the torchvision image processor for one helper, which the
    PIL image module also has, so without torchvision it is imported against a stand-in module."""
    name, module = "transformers.models.pixtral.image_processing_pixtral", "transformers.models.pixtral."
    if name in sys.modules or find_spec("torchvision") is not None:
        return importlib.import_module(module + "processing_pixtral").PixtralProcessor
    sys.modules[name] = stand_in = types.ModuleType(name)
    pil = importlib.import_module(module + "image_processing_pil_pixtral")
    stand_in.get_resize_output_image_size = pil.get_resize_output_image_size
    try:
        return importlib.import_module(module + "processing_pixtral").PixtralProcessor
    finally:
        del sys.modules[name]


# ------------------------------------------------------------------------------------------------- configs

_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=8192,
)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_SLIDING = dict(sliding_window=512, layer_types=["sliding_attention", "full_attention"])


def _text(model_type: str, tok, **kw) -> dict:
    ids = {f"{k}_token_id": getattr(tok, f"{k}_token_id") for k in ("pad", "bos", "eos")}
    return {"model_type": model_type, **_TEXT, "vocab_size": len(tok), **ids, **kw}


def _vision(model_type: str, image_size, patch_size, **kw) -> dict:
    return {"model_type": model_type, **_VISION, "image_size": image_size, "patch_size": patch_size, **kw}


# ------------------------------------------------------------------------------------------------ families
# Each builder returns (model class, config kwargs, processor).


def _llava():
    """llava-1.5 (Vicuna / Llama-2 tokenizer), CLIP 32/8: 16 image tokens; USER:/ASSISTANT: chat template."""
    special = dict(pad_token="<pad>", add_bos_token=True)
    tok = _tokenizer(tf.LlamaTokenizer, "spm", _t("<unk> <s> </s>"), _t("<image> <pad>"), **special)
    ip = tf.LlavaImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    template = _chat_template("{{ role | upper }}: ", " ", "<image>\n", "ASSISTANT:")
    geometry = dict(patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    proc = tf.LlavaProcessor(ip, tok, chat_template=template, **geometry)
    cfg = dict(
        text_config=_text("llama", tok),
        vision_config=_vision("clip_vision_model", 32, 8),
        image_token_index=proc.image_token_id,
        image_seq_length=16,
        vision_feature_select_strategy="default",
    )
    return tf.LlavaForConditionalGeneration, cfg, proc


def _llava_next(real_geometry: bool = False):
    """llava-v1.6-mistral layout; ``real_geometry``: CLIP 336/14 and the v1.6 grid pinpoints."""
    special = dict(pad_token="<unk>", add_bos_token=True)
    tok = _tokenizer(tf.LlamaTokenizer, "spm", _t("<unk> <s> </s>"), ("<image>",), **special)
    size, patch = (336, 14) if real_geometry else (32, 8)
    pinpoints = [[a * size, b * size] for a, b in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]
    crop = {"height": size, "width": size}
    ip = tf.LlavaNextImageProcessorPil(
        size={"shortest_edge": size}, crop_size=crop, image_grid_pinpoints=pinpoints
    )
    geometry = dict(patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    proc = tf.LlavaNextProcessor(ip, tok, **geometry)
    cfg = dict(
        text_config=_text("mistral", tok, sliding_window=None),
        vision_config=_vision("clip_vision_model", size, patch),
        image_token_index=proc.image_token_id,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(size // patch) ** 2,
        vision_feature_select_strategy="default",
    )
    return tf.LlavaNextForConditionalGeneration, cfg, proc


def _qwen_vl(version: str, real_geometry: bool = False):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL; ``real_geometry``: the checkpoints' patch size and min/max pixels."""
    special = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok = _tokenizer(tf.Qwen2Tokenizer, "byte", tail=_QWEN_TAIL, **special)
    if not real_geometry:
        patch, pixels = 8, (32 * 32, 64 * 64)
    elif version == "3":
        patch, pixels = 16, (65536, 16777216)
    else:
        patch, pixels = 14, (56 * 56, 28 * 28 * 16384)
    geometry = dict(patch_size=patch, temporal_patch_size=2)
    size = {"shortest_edge": pixels[0], "longest_edge": pixels[1]}
    ip = tf.Qwen2VLImageProcessorPil(merge_size=2, size=size, **geometry)
    name = {"2": "Qwen2VL", "2.5": "Qwen2_5_VL", "3": "Qwen3VL"}[version]
    model, proc_cls = getattr(tf, f"{name}ForConditionalGeneration"), getattr(tf, f"{name}Processor")
    vision = dict(depth=2, num_heads=2, spatial_merge_size=2, **geometry)
    rope, text = {"rope_type": "default", "mrope_section": [2, 3, 3]}, {}
    if version == "2":  # Qwen2-VL calls the vision width embed_dim and the merger's output hidden_size
        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
    else:
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64)
    if version == "2.5":
        vision.update(window_size=8 * patch, fullatt_block_indexes=[1])
    elif version == "3":
        vision.update(num_position_embeddings=2304 if real_geometry else 64, deepstack_visual_indexes=[0])
        rope, text = dict(rope, mrope_section=[4, 2, 2], mrope_interleaved=True), {"head_dim": 16}
    proc = _image_only(proc_cls)(ip, tok, chat_template=_chatml(_QWEN_IMAGE, default_system=version != "3"))
    ids = tok.convert_tokens_to_ids
    cfg = dict(
        text_config=_text(model.config_class.model_type + "_text", tok, rope_parameters=rope, **text),
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return model, cfg, proc


def _idefics(smol: bool):
    """Idefics3 (Llama-3 tokenizer) / SmolVLM (SmolLM2 tokenizer): 32 px tiles of 4 tokens, up to 2x2 tiles
    plus the global image."""
    if smol:
        special = dict(
            bos_token="<|im_start|>",
            eos_token="<end_of_utterance>",
            pad_token="<|im_end|>",
            unk_token="<|endoftext|>",
        )
        tok = _tokenizer(
            tf.GPT2Tokenizer, "byte", _t("<|endoftext|> <|im_start|> <|im_end|>"), _IDEFICS_TAIL, **special
        )
        ip_cls, proc_cls = tf.SmolVLMImageProcessorPil, _image_only(tf.SmolVLMProcessor)
        model, vision_type = tf.SmolVLMForConditionalGeneration, "smolvlm_vision"
    else:
        tail = (*_t("<|begin_of_text|> <|end_of_text|> <|reserved_special_token_0|>"), *_IDEFICS_TAIL)
        special = dict(
            bos_token="<|begin_of_text|>",
            eos_token="<end_of_utterance>",
            pad_token="<|reserved_special_token_0|>",
            add_bos_token=True,
        )
        tok = _tokenizer(tf.PreTrainedTokenizerFast, "byte", tail=tail, **special)
        ip_cls, proc_cls = tf.Idefics3ImageProcessorPil, tf.Idefics3Processor
        model, vision_type = tf.Idefics3ForConditionalGeneration, "idefics3_vision"
    ip = ip_cls(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    proc = proc_cls(ip, tok, image_seq_len=4, chat_template=_IDEFICS_TEMPLATE)
    cfg = dict(
        text_config=_text("llama", tok),
        vision_config=_vision(vision_type, 32, 8),
        scale_factor=2,
        image_token_id=proc.image_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return model, cfg, proc


def _paligemma():
    """PaliGemma 1 (Gemma tokenizer with the <locXXXX> / <segXXX> tokens), SigLIP 32/8: 16 image tokens."""
    plain = [f"<loc{i:04d}>" for i in range(1024)] + [f"<seg{i:03d}>" for i in range(128)]
    tok = _tokenizer(tf.GemmaTokenizer, "spm", _GEMMA_HEAD[:5], ("<image>",), plain, add_bos_token=True)
    ip = tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    ip.image_seq_length = 16
    proc = tf.PaliGemmaProcessor(ip, tok)
    cfg = dict(
        text_config=_text("gemma", tok, head_dim=16),
        vision_config=_vision("siglip_vision_model", 32, 8),
        image_token_index=proc.image_token_id,
        vocab_size=len(tok),
        projection_dim=64,
        hidden_size=64,
    )
    return tf.PaliGemmaForConditionalGeneration, cfg, proc


def _gemma3():
    """Gemma 3, SigLIP 64/8 pooled to 16 soft tokens per image."""
    boi, eoi, soft = tail = _t("<start_of_image> <end_of_image> <image_soft_token>")
    special = dict(boi_token=boi, eoi_token=eoi, image_token=soft, add_bos_token=True)
    tok = _tokenizer(tf.GemmaTokenizer, "spm", _GEMMA_HEAD, tail, **special)
    ip = tf.Gemma3ImageProcessorPil(size={"height": 64, "width": 64})
    proc = tf.Gemma3Processor(ip, tok, chat_template=_GEMMA_TEMPLATE, image_seq_length=16)
    cfg = dict(
        text_config=_text("gemma3_text", tok, head_dim=16, query_pre_attn_scalar=16, **_SLIDING),
        vision_config=_vision("siglip_vision_model", 64, 8),
        mm_tokens_per_image=16,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )
    return tf.Gemma3ForConditionalGeneration, cfg, proc


def _reinit_gemma3(model) -> None:
    """Gemma 3's random init zeroes the multimodal projector, which would make all images look the same."""
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.02)


def _llava_onevision():
    """llava-onevision-qwen2 layout, SigLIP 32/8 (16 tokens per crop), anyres_max_9, 32 px crops up to 2x2."""
    special = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok = _tokenizer(tf.Qwen2Tokenizer, "byte", tail=(*_QWEN_TAIL[:3], "<image>", "<video>"), **special)
    pinpoints = [[32 * a, 32 * b] for a in (1, 2) for b in (1, 2)]
    ip = tf.LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints)
    geometry = dict(num_image_tokens=16, vision_feature_select_strategy="full")
    proc = _image_only(tf.LlavaOnevisionProcessor)(ip, tok, chat_template=_chatml("<image>\n"), **geometry)
    cfg = dict(
        text_config=_text("qwen2", tok),
        vision_config=_vision("siglip_vision_model", 32, 8),
        image_token_index=proc.image_token_id,
        video_token_index=proc.video_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    return tf.LlavaOnevisionForConditionalGeneration, cfg, proc


def _aya_vision():
    """Aya Vision (Cohere tokenizer, Cohere2 text model), 32 px tiles of 4 tokens, up to 4 tiles + global."""
    head = _t("<PAD> <UNK> <CLS> <SEP> <MASK_TOKEN> <BOS_TOKEN> <EOS_TOKEN>")
    tail = _t(
        "<|START_OF_TURN_TOKEN|> <|END_OF_TURN_TOKEN|> <|USER_TOKEN|> <|CHATBOT_TOKEN|> <|SYSTEM_TOKEN|> "
        "<|START_OF_IMG|> <|END_OF_IMG|> <|IMG_PATCH|> <|IMG_LINE_BREAK|>"
    )
    tok = _tokenizer(tf.CohereTokenizer, "byte", head, tail, _t("TILE TILE_GLOBAL"), add_bos_token=True)
    ip = tf.GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4)
    template = _chat_template(
        "<|START_OF_TURN_TOKEN|><|{{ {'assistant': 'CHATBOT'}.get(role, role | upper) }}_TOKEN|>",
        "<|END_OF_TURN_TOKEN|>",
        "<image>",
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        head="{{ bos_token }}",
    )
    proc = tf.AyaVisionProcessor(
        ip, tok, patch_size=8, img_size=32, downsample_factor=2, chat_template=template
    )
    cfg = dict(
        text_config=_text("cohere2", tok, **_SLIDING),
        vision_config=_vision("siglip_vision_model", 32, 8),
        image_token_index=proc.image_token_id,
        downsample_factor=2,
    )
    return tf.AyaVisionForConditionalGeneration, cfg, proc


def _mistral3():
    """Mistral Small 3.1 layout (Tekken-style tokenizer, [IMG]=10), Pixtral 8 px patches merged 2x2."""
    head = _t(
        "<unk> <s> </s> [INST] [/INST] [AVAILABLE_TOOLS] [/AVAILABLE_TOOLS] [TOOL_RESULTS] [/TOOL_RESULTS] "
        "[TOOL_CALLS] [IMG] <pad> [IMG_BREAK] [IMG_END] [PREFIX] [MIDDLE] [SUFFIX] [SYSTEM_PROMPT] "
        "[/SYSTEM_PROMPT]"
    )
    special = dict(
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", add_bos_token=True
    )
    tok = _tokenizer(tf.PreTrainedTokenizerFast, "byte", head, **special)
    ip = tf.PixtralImageProcessorPil(size={"longest_edge": 64}, patch_size={"height": 8, "width": 8})
    template = _chat_template(
        "{{ {'user': '[INST]', 'system': '[SYSTEM_PROMPT]'}.get(role, '') }}",
        "{{ {'user': '[/INST]', 'system': '[/SYSTEM_PROMPT]'}.get(role, eos_token) }}",
        "[IMG]",
        "",
        head="{{ bos_token }}",
    )
    proc = _pixtral_processor()(ip, tok, patch_size=8, spatial_merge_size=2, chat_template=template)
    cfg = dict(
        text_config=_text("mistral", tok, sliding_window=None),
        vision_config=_vision("pixtral", 64, 8),
        image_token_index=proc.image_token_id,
        spatial_merge_size=2,
    )
    return tf.Mistral3ForConditionalGeneration, cfg, proc


def _internvl():
    """InternVL3-hf layout (Qwen2 tokenizer), 32 px tiles of 4 tokens, up to 4 tiles + thumbnail."""
    tail = (*_QWEN_TAIL[:3], *_t("<img> </img> <IMG_CONTEXT> <video>"))
    special = dict(
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        video_token="<video>",
    )
    tok = _tokenizer(tf.Qwen2Tokenizer, "byte", tail=tail, **special)
    ip = tf.GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4)
    proc = _image_only(tf.InternVLProcessor)(
        ip, tok, image_seq_length=4, chat_template=_chatml("<IMG_CONTEXT>\n")
    )
    cfg = dict(
        text_config=_text("qwen2", tok),
        vision_config=_vision("internvl_vision", [32, 32], [8, 8]),
        image_token_id=proc.image_token_id,
        image_seq_length=4,
        downsample_ratio=0.5,
    )
    return tf.InternVLForConditionalGeneration, cfg, proc


# -------------------------------------------------------------------------------------------- public API

_BUILDERS = {
    "llava": _llava,
    "llava_next": _llava_next,
    "qwen2_vl": functools.partial(_qwen_vl, "2"),
    "qwen2_5_vl": functools.partial(_qwen_vl, "2.5"),
    "idefics3": functools.partial(_idefics, False),
    "smolvlm": functools.partial(_idefics, True),
    "paligemma": _paligemma,
    "gemma3": _gemma3,
    "llava_onevision": _llava_onevision,
    "aya_vision": _aya_vision,
    "mistral3": _mistral3,
    "qwen3_vl": functools.partial(_qwen_vl, "3"),
    "internvl": _internvl,
}
_REAL_GEOMETRY = ("llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
_POST_INIT = {"gemma3": _reinit_gemma3}

FAMILIES: tuple[str, ...] = tuple(_BUILDERS)

IMAGE_MARKER: dict[str, str] = {
    "llava": "<image>",
    "llava_next": "<image>",
    "qwen2_vl": _QWEN_IMAGE,
    "qwen2_5_vl": _QWEN_IMAGE,
    "idefics3": "<image>",
    "smolvlm": "<image>",
    "paligemma": "<image>",
    "gemma3": "<start_of_image>",
    "llava_onevision": "<image>",
    "aya_vision": "<image>",
    "mistral3": "[IMG]",
    "qwen3_vl": _QWEN_IMAGE,
    "internvl": "<IMG_CONTEXT>",
}


def build_tiny(family: str, seed: int = 0, **overrides):
    """``(model, processor)`` for ``family`` (one of ``FAMILIES``); the weights are a function of ``seed``.

    ``overrides``: ``real_geometry=True`` (llava_next, qwen2_vl, qwen2_5_vl, qwen3_vl), ``text_config`` /
    ``vision_config`` dicts merged into the sub-configs, anything else set on the top-level config."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    kwargs = {}
    if overrides.pop("real_geometry", False):
        if family not in _REAL_GEOMETRY:
            raise ValueError(f"real_geometry is only supported for {_REAL_GEOMETRY}, not {family!r}")
        kwargs["real_geometry"] = True
    model_cls, cfg, processor = _BUILDERS[family](**kwargs)
    for key in ("text_config", "vision_config"):
        cfg[key] = {**cfg[key], **overrides.pop(key, {})}
    config = model_cls.config_class(**cfg, **overrides)
    torch.manual_seed(seed)
    model = model_cls(config)
    if family in _POST_INIT:
        _POST_INIT[family](model)
    if processor.chat_template and not processor.tokenizer.chat_template:
        processor.tokenizer.chat_template = processor.chat_template
    return model.float().eval(), processor


def tiny_image(seed: int = 0, size: tuple[int, int] = (48, 32), mode: str = "RGB") -> Image.Image:
    """Deterministic random-ish ``size=(W, H)`` image: 8 px colour blocks plus pixel noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(0, 256, (math.ceil(h / 8), math.ceil(w / 8), 3), dtype=np.uint8)
    arr = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w].astype(np.int16)
    arr = np.clip(arr + rng.integers(-16, 17, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


# ---------------------------------------------------------------------------------------------- self-check


def _count_image_tokens(model, inputs) -> int:
    config = model.config
    image_id = getattr(config, "image_token_id", None)
    image_id = config.image_token_index if image_id is None else image_id
    return int((inputs["input_ids"] == image_id).sum())


def _self_check() -> None:
    """Every family: processor + forward + greedy generate with one image, two images and the chat template;
    images change the logits; same seed, same weights; other seed, other weights. Prints the image-token
    counts of (1 image, 2 images, chat template with 1 image). Then the real-geometry token counts."""
    img, img2 = tiny_image(0), tiny_image(1)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]}]
    for family in FAMILIES:
        start = time.perf_counter()
        model, proc = build_tiny(family)
        build_s = time.perf_counter() - start
        marker = IMAGE_MARKER[family]
        assert model.config.get_text_config().vocab_size == len(proc.tokenizer)
        prompts = [
            (f"{marker}what is in this image?", [img]),
            (f"{marker}a cat. {marker}a dog. the", [img, img2]),
        ]
        if proc.chat_template:
            prompts.append(
                (proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), [img])
            )
        counts, logits = [], []
        with torch.no_grad():
            for text, images in prompts:
                inputs = proc(text=text, images=images, return_tensors="pt")
                counts.append(_count_image_tokens(model, inputs))
                model(**inputs)
                out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
                assert out.shape[1] == inputs["input_ids"].shape[1] + 3, family
            for image in (img, img2):
                logits.append(model(**proc(text=prompts[0][0], images=[image], return_tensors="pt")).logits)
        assert not torch.allclose(*logits), f"{family}: the image does not affect the logits"
        state, same, other = (
            m.state_dict() for m in (model, build_tiny(family)[0], build_tiny(family, 1)[0])
        )
        assert all(torch.equal(v, same[k]) for k, v in state.items()), f"{family}: not deterministic"
        assert not all(torch.equal(v, other[k]) for k, v in state.items()), f"{family}: seed ignored"
        params = sum(p.numel() for p in model.parameters()) / 1e3
        print(f"{family:16s} built in {build_s:.2f}s, {params:.0f}K params, image tokens {counts}")
    for family, side, expected in [
        ("llava_next", 672, 2928),
        ("qwen2_vl", 448, 256),
        ("qwen2_5_vl", 448, 256),
        ("qwen3_vl", 448, 196),
    ]:
        model, proc = build_tiny(family, real_geometry=True)
        image = tiny_image(0, (side, side))
        inputs = proc(text=f"{IMAGE_MARKER[family]}describe", images=[image], return_tensors="pt")
        with torch.no_grad():
            model(**inputs)
        n = _count_image_tokens(model, inputs)
        assert n == expected, (family, n, expected)
        print(f"{family:16s} real geometry: a {side}x{side} image costs {n} image tokens")


if __name__ == "__main__":
    _self_check()
