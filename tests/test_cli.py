"""`aim-icl generate` end to end on a saved tiny model, and its error line."""

from __future__ import annotations

import pytest

from aim_icl.cli import main
from aim_icl.testing.tiny import build_tiny, tiny_image


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model, processor = build_tiny("llava")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    for i in range(3):
        tiny_image(i).save(root / f"{i}.png")
    return root


@pytest.mark.parametrize("verb", [[], ["generate"]])
def test_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: aim-icl" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["zero", "text", "icl", "aim"])
def test_generate_prints_an_answer(saved, mode, capsys):
    demos = [] if mode == "zero" else ["--demo", str(saved / "1.png"), "question: what? answer: red"]
    code = main(["generate", "--model", str(saved / "model"), "--image", str(saved / "0.png"),
                 "--prompt", "question: what? answer:", "--mode", mode, "--max-new-tokens", "3", *demos])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.strip()


def test_bad_input_is_one_error_line(saved, capsys):
    code = main(
        ["generate", "--model", str(saved / "model"), "--image", str(saved / "none.png"), "--prompt", "x"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aim-icl generate: error: image not found") and "\n" not in err
