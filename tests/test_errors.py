"""Bad input: one clear error line or the documented conversion, never a traceback from inside transformers."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import make_demos
from PIL import Image
from safetensors.torch import load_file, save_file

from aim_icl import AIM, AIMError, Demo, load_image
from aim_icl.errors import MissingDependency, check_extra
from aim_icl.testing.tiny import build_tiny, tiny_image

QUERY = "question: what is it? answer:"


@pytest.mark.parametrize(
    "image",
    [
        Image.new("P", (20, 20), 3),
        Image.new("RGBA", (20, 20), (255, 0, 0, 0)),
        Image.new("LA", (20, 20), (10, 128)),
        Image.new("L", (20, 20), 7),
        Image.new("CMYK", (20, 20)),
        Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 100),
    ],
    ids=["palette", "rgba", "la", "grey", "cmyk", "16-bit"],
)
def test_images_of_any_mode_become_rgb(image, llava):
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    text = "question: what? answer: red"  # the model reads the image as its RGB conversion
    assert torch.equal(llava.aggregate(Demo(image, text)), llava.aggregate(Demo(rgb, text)))


def test_transparent_pixels_become_white_and_16_bit_is_rescaled():
    assert load_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert [load_image(deep).getpixel((x, 0))[0] for x in (0, 1)] == [0, 255]


def test_corrupt_and_missing_images(tmp_path, llava):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(AIMError, match="cannot read image .*bad.png"):
        llava.generate(bad, QUERY, mode="zero")
    with pytest.raises(AIMError, match="image not found"):
        llava.aggregate(Demo(tmp_path / "missing.jpg", "question: what? answer: red"))


def test_images_load_from_paths_and_bytes(tmp_path, llava):
    path = tmp_path / "q.png"
    tiny_image(4).save(path)
    from_path = llava.build_inputs(path, QUERY, [], "zero")
    from_bytes = llava.build_inputs(path.read_bytes(), QUERY, [], "zero")
    assert torch.equal(from_path["pixel_values"], from_bytes["pixel_values"])


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_demo_text(text, llava):
    with pytest.raises(AIMError, match="demo text is empty"):
        llava.aggregate(Demo(tiny_image(1), text))


def test_unknown_mode_and_demos_given_to_zero(llava):
    with pytest.raises(AIMError, match="unknown mode 'few'"):
        llava.build_inputs(tiny_image(1), QUERY, [], "few")
    with pytest.raises(AIMError, match="mode 'zero' takes no demos"):
        llava.build_inputs(tiny_image(1), QUERY, make_demos(1), "zero")


def test_cached_items_outside_their_modes(llava):
    states = llava.encode(make_demos(1))[0]
    fused = llava.project(states.hidden)
    with pytest.raises(AIMError, match="fused tensors can only be used in mode 'aim'"):
        llava.build_inputs(tiny_image(1), QUERY, [fused], "text")
    with pytest.raises(AIMError, match="mode 'icl' needs Demo objects"):
        llava.build_inputs(tiny_image(1), QUERY, [states], "icl")
    with pytest.raises(AIMError, match="a fused demo must be"):
        llava.build_inputs(tiny_image(1), QUERY, [fused[:, :5]], "aim")
    # cached states serve `aim` (projected on read) and `text` (their token ids) like the Demo they came from
    demo = make_demos(1)[0]
    for mode in ("aim", "text"):
        a, b = (llava.build_inputs(tiny_image(1), QUERY, [x], mode) for x in (states, demo))
        assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float()) for k in a)


def test_prompt_longer_than_the_context():
    model, processor = build_tiny("llava", text_config={"max_position_embeddings": 64})
    aim = AIM(model, processor)
    with pytest.raises(AIMError, match=r"prompt is \d+ tokens but the model's context is 64"):
        aim.build_inputs(tiny_image(1), QUERY, make_demos(8), "text")


def test_a_model_without_the_image_convention_is_named():
    from transformers import LlamaConfig, LlamaForCausalLM

    _, processor = build_tiny("llava")
    lm = LlamaForCausalLM(
        LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(AIMError, match="missing config.image_token_id"):
        AIM(lm, processor)


@pytest.mark.parametrize(
    ("weights", "reason"),
    [
        (b"not a safetensors file", "header"),  # corrupt: safetensors cannot read it
        ({"linear.weight": torch.zeros(3)}, "Missing key(s) in state_dict: "),  # a linear projector's
        ("wrong shape", "size mismatch for"),
    ],
    ids=["corrupt", "other-keys", "wrong-shape"],
)
def test_a_bad_projector_file_is_one_clear_error(weights, reason, llava, tmp_path):
    directory = llava.save_projector(tmp_path / "proj")
    path = directory / "projector.safetensors"
    if isinstance(weights, bytes):
        path.write_bytes(weights)
    else:
        state = (
            weights
            if isinstance(weights, dict)
            else {k: v.reshape(-1)[:1] for k, v in load_file(path).items()}
        )
        save_file(state, str(path))
    with pytest.raises(AIMError) as err:
        AIM(*build_tiny("llava"), projector=directory)
    message = str(err.value)
    assert message.startswith(f"cannot load {path}: ") and reason in message and "\n" not in message


@pytest.mark.parametrize(
    ("module", "prefer", "message"),
    [
        ("fastapi", None, 'needs the [serve] extra (fastapi is not installed): pip install "aim-icl[serve]"'),
        ("matplotlib.figure", None, "needs the [eval] extra (matplotlib is not installed)"),
        ("yaml", None, "needs the [train] extra (yaml is not installed)"),  # distribution pyyaml
        ("psutil", None, "needs the [eval] extra"),  # in [eval] and [serve]: the first ...
        ("psutil", "serve", "needs the [serve] extra"),  # ... unless the verb's own extra has it
        ("torch", "serve", "torch is not installed; it is a dependency of aim-icl: pip install aim-icl"),
    ],
)
def test_a_missing_module_names_the_extra_that_installs_it(module, prefer, message):
    error = MissingDependency.from_import_error(ModuleNotFoundError(name=module), prefer=prefer)
    assert isinstance(error, AIMError) and str(error).startswith(message)


def test_a_module_aim_icl_does_not_require_is_not_blamed_on_an_extra():
    assert MissingDependency.from_import_error(ModuleNotFoundError(name="torchvision")) is None
    assert MissingDependency.from_import_error(ModuleNotFoundError("no name")) is None


def test_check_extra_finds_a_missing_module_without_importing_it(monkeypatch):
    check_extra("serve")  # installed in the test environment
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    with pytest.raises(MissingDependency, match=r"needs the \[serve\] extra \(uvicorn is not installed\)"):
        check_extra("serve")


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3", "gemma3", "paligemma"])
@pytest.mark.parametrize("mode", ["text", "icl", "aim"])
def test_a_demo_text_holding_the_image_token_is_one_error(family, mode):
    """The model's image token in a demo's text (or its answer) would ask for an image that is not there."""
    model, processor = build_tiny(family)
    aim = AIM(model, processor)
    token = processor.tokenizer.convert_ids_to_tokens(aim.backbone.image_token_id)
    demo = Demo(tiny_image(1), f"question: what is it? answer: a {token} dax")
    with pytest.raises(AIMError, match="holds the image token"):
        aim.build_inputs(tiny_image(2), QUERY, [demo], mode)
    with pytest.raises(AIMError, match="holds the image token"):
        aim.build_inputs(tiny_image(2), QUERY, [], "zero", target=f"a {token}")
