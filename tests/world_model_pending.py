# Pending: these checks need the shipped world checkpoint; rename to test_world_model.py once it is committed.
"""The world's tiny MLLM: the recipe builds a real LLaVA, pretraining saves a fingerprinted checkpoint, the shipped
checkpoint loads offline, matches its fingerprint and keeps its measured quality on held-out seeds."""

from __future__ import annotations

import functools
import json
import shutil

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from aim_icl import AIM, AIMError
from aim_icl.cli import main
from aim_icl.world.checkpoint import MODEL_DIR, PROJECTOR_DIR, check_fingerprint, weight_files
from aim_icl.world.measure import evaluate, qa_accuracy
from aim_icl.world.recipe import IMAGE_TOKENS, build_model, build_processor
from aim_icl.world.scene import sample_scene
from aim_icl.world.tasks import fast_binding

# Quality floors for the shipped checkpoint, on seeds no measurement used while building it (see the report in
# the world README section): measured values minus a margin for 100-item samples.
QA_FLOOR = 0.85
AIM_BINDING_FLOOR = 0.8


@functools.cache
def shipped() -> AIM:
    torch.set_num_threads(2)
    return AIM.from_pretrained(MODEL_DIR, projector=PROJECTOR_DIR)


def test_the_recipe_is_a_real_llava_with_16_image_tokens_per_image():
    processor = build_processor()
    model = build_model(processor)
    assert isinstance(model, LlavaForConditionalGeneration)
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied: names are copied, not learnt
    inputs = processor(
        text=["<image> what colour is it ?"], images=[sample_scene_image()], return_tensors="pt"
    )
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == IMAGE_TOKENS == 16
    assert model(**inputs).logits.shape[-1] == len(processor.tokenizer)


def sample_scene_image():
    import random

    return sample_scene(random.Random(0)).render()


def test_world_pretrain_writes_a_fingerprinted_checkpoint_that_aim_loads(tmp_path):
    out = tmp_path / "model"
    args = [
        "world",
        "pretrain",
        "--out",
        str(out),
        "--vision-steps",
        "2",
        "--lm-steps",
        "3",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    fingerprint = check_fingerprint(out)
    assert fingerprint["pretrain"]["lm_steps"] == 3 and fingerprint["pretrain"]["seed"] == 0
    assert set(fingerprint["sha256"]) == {p.name for p in weight_files(out)}
    aim = AIM.from_pretrained(out)
    assert aim.backbone.signature.model_type == "llava"
    assert main(args) == 2  # an existing model is never overwritten silently


def test_shipped_checkpoint_matches_its_fingerprint():
    for directory in (MODEL_DIR, PROJECTOR_DIR):
        fingerprint = check_fingerprint(directory)
        assert fingerprint["sha256"]
    size = sum(p.stat().st_size for d in (MODEL_DIR, PROJECTOR_DIR) for p in d.iterdir())
    assert size < 10 * 2**20


def test_a_changed_weight_file_is_detected(tmp_path):
    copy = shutil.copytree(MODEL_DIR, tmp_path / "model")
    weights = weight_files(copy)[0]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AIMError, match="do not match"):
        check_fingerprint(copy)


def test_shipped_model_answers_single_image_questions():
    assert qa_accuracy(shipped(), seed=2024, n_items=100)["all"] >= QA_FLOOR


def test_shipped_projector_binds_held_out_names_at_four_shots():
    items = fast_binding(seed=2024, n_items=100)
    score = evaluate(shipped(), items, "aim", 4, generate=False)
    assert score.rank_accuracy >= AIM_BINDING_FLOOR


def test_world_eval_runs_the_four_modes_end_to_end(tmp_path, capsys):
    out = tmp_path / "rows.json"
    args = ["world", "eval", "--n", "3", "--shots", "0", "2", "--json", str(out), "--threads", "1"]
    assert main([*args, "--projector", str(PROJECTOR_DIR)]) == 0
    rows = json.loads(out.read_text())
    assert {(r["mode"], r["shots"]) for r in rows} == {("zero", 0), ("text", 2), ("icl", 2), ("aim", 2)}
    assert all(0.0 <= r["rank_accuracy"] <= 1.0 for r in rows)
    zero, aim = (next(r for r in rows if r["mode"] == m) for m in ("zero", "aim"))
    tokens_per_demo = 5  # "this is a <name> ." and no image: aim costs the demos' text tokens alone
    assert aim["prompt_tokens"] == zero["prompt_tokens"] + 2 * tokens_per_demo
    assert "aim" in capsys.readouterr().out
