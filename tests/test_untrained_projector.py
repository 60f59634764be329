"""One policy for a projector nobody trained: the default fresh projector is `gated` with its gate at zero, so
`aim` mode runs exactly as `text` mode and says so once, in the Python API and in every verb alike."""

from __future__ import annotations

import logging

import pytest

from aim_icl import AIM, Demo
from aim_icl.cli import main
from aim_icl.core.projector import GatedProjector
from aim_icl.testing.tiny import build_tiny, tiny_image

QUERY = "question: what? answer:"


def untrained_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("no trained projector")]


def test_a_fresh_aim_runs_aim_mode_as_text_mode_and_says_so_once(caplog):
    aim = AIM(*build_tiny("llava"))
    assert isinstance(aim.projector, GatedProjector)
    demos = [
        Demo(tiny_image(i), f"question: what? answer: {w}") for i, w in enumerate(["red dog", "blue cat"])
    ]
    with caplog.at_level(logging.WARNING):
        fused = aim.generate(tiny_image(9), QUERY, demos=demos, mode="aim", max_new_tokens=4)
        again = aim.generate(tiny_image(8), QUERY, demos=demos, mode="aim", max_new_tokens=4)
    text = aim.generate(tiny_image(9), QUERY, demos=demos, mode="text", max_new_tokens=4)
    assert fused == text
    (message,) = untrained_warnings(caplog)  # once, not per call
    assert "runs as `text` mode" in message and "--projector" in message and "projector=" in message
    assert again == aim.generate(tiny_image(8), QUERY, demos=demos, mode="text", max_new_tokens=4)


def test_a_trained_or_explicitly_residual_projector(caplog, llava):
    with caplog.at_level(logging.WARNING):
        llava.aggregate(Demo(tiny_image(0), "question: what? answer: red"))  # copy map fitted: nothing to say
        assert untrained_warnings(caplog) == []
        residual = AIM(llava.model, llava.encoder.processor, projector_name="residual")
        residual.aggregate(Demo(tiny_image(0), "question: what? answer: red"))
    (message,) = untrained_warnings(caplog)
    assert "fused tokens are zero" in message and "fit_projector" in message


@pytest.mark.parametrize("verb", ["generate"])
def test_a_verb_with_a_model_and_no_projector_answers_as_text_mode(
    verb, saved_llava, tmp_path, caplog, capsys
):
    for i in range(2):
        tiny_image(i).save(tmp_path / f"{i}.png")
    demo = ["--demo", str(tmp_path / "1.png"), "question: what? answer: red dog"]
    base = [
        verb,
        "--model",
        str(saved_llava.model),
        "--image",
        str(tmp_path / "0.png"),
        "--prompt",
        QUERY,
        *demo,
    ]
    with caplog.at_level(logging.WARNING):
        assert main([*base, "--mode", "aim", "--max-new-tokens", "4"]) == 0
    fused = capsys.readouterr().out
    assert main([*base, "--mode", "text", "--max-new-tokens", "4"]) == 0
    assert fused == capsys.readouterr().out
    assert len(untrained_warnings(caplog)) == 1
