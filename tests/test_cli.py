"""The CLI: `aim-icl generate` end to end, one error line for bad input and for a missing extra, and a `--help`
that imports no heavy module."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from aim_icl import Demo
from aim_icl.cli import VERBS, build_parser, main
from aim_icl.testing.tiny import tiny_image
from aim_icl.world.scene import Scene

QUERY = "question: what? answer:"
# modules a verb may import only inside `run`
HEAVY = ("torch", "transformers", "accelerate", "fastapi", "uvicorn", "pydantic", "matplotlib", "datasets")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for i in range(3):
        tiny_image(i).save(root / f"{i}.png")
    return root


def run_cli(*args: str, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`aim-icl ARGS` in a fresh interpreter where the modules in `block` cannot be imported (as if not installed)."""
    code = (
        f"import sys\nfor name in {block!r}: sys.modules[name] = None\n"
        f"from aim_icl.cli import main\nsys.exit(main({list(args)!r}))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("verb", [[], ["generate"]])
def test_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: aim-icl" in capsys.readouterr().out


def test_help_of_every_verb_imports_no_heavy_module():
    """`aim-icl --help` and `aim-icl <verb> --help` start fast: nothing heavy is imported to declare arguments."""
    code = f"""
import contextlib, io, json, sys
from aim_icl.cli import main
loaded = {{}}
for verb in ([], *[[v] for v in {list(VERBS)!r}]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([*verb, "--help"])
    loaded[" ".join(verb) or "(none)"] = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps(loaded))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert set(loaded) == {"(none)", *VERBS}
    assert loaded == {verb: [] for verb in loaded}


@pytest.mark.parametrize("mode", ["zero", "text", "icl", "aim"])
def test_generate_prints_the_answer_of_the_python_api(saved_llava, images, mode, capsys):
    demos = [] if mode == "zero" else [(images / "1.png", "question: what? answer: red")]
    args = ["generate", "--model", str(saved_llava.model), "--projector", str(saved_llava.projector),
            "--image", str(images / "0.png"), "--prompt", QUERY, "--mode", mode, "--max-new-tokens", "3"]  # fmt: skip
    assert main([*args, *(x for image, text in demos for x in ("--demo", str(image), text))]) == 0
    expected = saved_llava.aim.generate(
        images / "0.png",
        QUERY,
        demos=[Demo(image, text) for image, text in demos],
        mode=mode,
        max_new_tokens=3,
    )
    assert capsys.readouterr().out == expected + "\n"


def test_generate_without_a_model_answers_with_the_world_model(tmp_path, capsys):
    """No --model: the embedded world model (no download), which names a clear object's colour."""
    Scene("circle", "blue", "large", "left", 5.0, 1).render().save(tmp_path / "q.png")
    args = [
        "generate",
        "--image",
        str(tmp_path / "q.png"),
        "--prompt",
        "what colour is it ?",
        "--mode",
        "zero",
    ]
    assert main([*args, "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.split() == ["blue", "."]


def test_bad_input_is_one_error_line(saved_llava, images, capsys):
    code = main(
        ["generate", "--model", str(saved_llava.model), "--image", str(images / "none.png"), "--prompt", "x"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aim-icl generate: error: image not found") and "\n" not in err


def test_a_corrupt_projector_is_one_error_line(saved_llava, images, tmp_path, capsys):
    projector = saved_llava.aim.save_projector(tmp_path / "projector")
    save_file({"copy.weight": torch.zeros(1)}, str(projector / "projector.safetensors"))
    args = [
        "generate",
        "--model",
        str(saved_llava.model),
        "--projector",
        str(projector),
        "--image",
        str(images / "0.png"),
    ]
    assert main([*args, "--prompt", QUERY]) == 2
    err = capsys.readouterr().err  # the model loaded (its progress bar), then the projector failed: one line
    assert err.splitlines()[-1].startswith("aim-icl generate: error: cannot load ") and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "missing", "extra"),
    [
        (["serve"], "fastapi", "serve"),
        (["serve"], "uvicorn", "serve"),
        (["demo", "--items", "1"], "matplotlib", "eval"),
        (["train", "--data", "x.jsonl"], "yaml", "train"),
    ],
)
def test_a_missing_extra_is_named_in_one_line_before_any_work(argv, missing, extra):
    result = run_cli(*argv, block=(missing,))
    assert result.returncode == 2
    assert result.stderr == (
        f"aim-icl {argv[0]}: error: needs the [{extra}] extra ({missing} is not installed): "
        f'pip install "aim-icl[{extra}]"\n'
    )
    assert result.stdout == ""  # checked before the verb ran (demo would have printed its table)


def test_a_module_of_an_extra_missing_deep_inside_a_verb_is_one_line_too(tmp_path):
    """A verb with no extra of its own (`world ship` reads YAML from the [train] extra) still gets one line."""
    result = run_cli("world", "ship", "--model", str(tmp_path), "--projector", str(tmp_path), block=("yaml",))
    assert result.returncode == 2
    assert result.stderr == (
        'aim-icl world: error: needs the [train] extra (yaml is not installed): pip install "aim-icl[train]"\n'
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["generate", "--image", "q.png", "--prompt", "x", "--max-new-tokens", "0"],
            "--max-new-tokens: must be at least 1",
        ),
        (
            ["generate", "--image", "q.png", "--prompt", "x", "--max-new-tokens", "-1"],
            "--max-new-tokens: must be at least 1",
        ),
        (
            ["generate", "--image", "q.png", "--prompt", "x", "--device", "bogus"],
            "--device: 'bogus' is not a torch device",
        ),
        (["serve", "--port", "99999"], "--port: a TCP port is 1-65535, got 99999"),
        (["eval", "--task", "vqav2", "--device", "nope"], "--device: 'nope' is not a torch device"),
    ],
)
def test_out_of_range_options_are_one_error_line_before_any_model_loads(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and message in err[-1] and "Traceback" not in "".join(err)


def test_arguments_that_contradict_each_other_fail_in_cli_words_before_the_model_loads(capsys):
    """--mode zero with --demo: one line naming the flags (the model path does not exist: it was never read)."""
    args = ["generate", "--model", "no/such/model", "--image", "q.png", "--prompt", "x", "--mode", "zero"]
    assert main([*args, "--demo", "d.png", "a demo"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "aim-icl generate: error: --mode zero reads no demonstrations: drop --demo or pick text, icl or aim\n"
    )


@pytest.mark.parametrize(
    "argv",
    [["generate", "--model", "no/such/model", "--image", "q.png", "--prompt", "x"], ["serve"], ["inspect"],
     ["eval", "--task", "fast_binding"], ["bank", "build", "--demos", "d.jsonl", "--bank", "b.sqlite"],
     ["train", "--data", "x.jsonl", "--output", "out"]],
)  # fmt: skip
def test_device_cuda_on_a_cpu_only_torch_is_one_line_before_any_model_loads(argv, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    try:
        code = main([*argv, "--device", "cuda"])
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "device 'cuda': a CPU-only torch" in err[-1] and "--device cpu or auto" in err[-1]
    assert "Traceback" not in "".join(err)


def test_inspect_shows_tokens_as_text_not_tokenizer_pieces(saved_llava, images, capsys):
    args = [
        "inspect",
        "--model",
        str(saved_llava.model),
        "--projector",
        str(saved_llava.projector),
        "--top",
        "2",
    ]
    assert main([*args, "--demo", str(images / "0.png"), "question: what picture? answer: red"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
    assert [row[1] for row in rows] == ["question", ":", "what", "picture", "?", "answer", ":", "red"]
    assert "▁" not in out  # sentencepiece's word-start mark (BPE's is Ġ)


def _options(parser):
    """Every option of `parser` and of its verbs and actions, with the parser it belongs to."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _options(sub)
        elif action.option_strings:
            yield parser, action


def test_help_shows_every_default_and_no_old_spelling(monkeypatch, capsys):
    """Every option with a default says it (e.g. generate's answer length); hidden old spellings stay out."""
    monkeypatch.setenv("AIM_ICL_API_KEY", "s3cret-key")
    hidden = []
    for sub, action in _options(build_parser()):
        unset = action.default in (None, False, [], argparse.SUPPRESS)
        if action.help is argparse.SUPPRESS:
            hidden.append(action.option_strings[0])
            assert not re.search(rf"{action.option_strings[0]}(?![\w-])", sub.format_help())
        elif not unset and "key" not in action.dest.split("_"):
            assert "default" in action.help, (sub.prog, action.option_strings)
    assert {"--output-dir", "--out", "--model-dtype", "--cpu", "--backbone-dtype"} <= set(hidden)
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "longest answer, in tokens (default: 32)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "s3cret-key" not in capsys.readouterr().out  # a default read from the environment is never shown
