"""The README's Python examples run, as written, on the tiny LLaVA.

The rule: every ```python block of README.md runs, in README order, in one namespace (a later block may use the
names an earlier one made, as a reader would), in a fresh interpreter whose working directory is empty. The
reader's own data the blocks leave undefined (`support_images`, `query_image`, `messages`) is defined
in PLACEHOLDERS below; the model id, the projector path and the server URL are replaced by the session's tiny
saved LLaVA, its projector, and an `aim-icl serve` started on them (SUBSTITUTIONS). A block that needs a name no
earlier block or placeholder defines fails here: define it in the README or add a placeholder.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import serving

README = Path(__file__).resolve().parents[1] / "README.md"

PLACEHOLDERS = """
import base64, io
from aim_icl.testing.tiny import tiny_image

support_images = [tiny_image(i) for i in range(16)]
query_image = tiny_image(99)


def _data_url(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _turn(image):
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(image)}},
                                        {"type": "text", "text": "What animal is this?"}]}


messages = [_turn(tiny_image(1)), {"role": "assistant", "content": "a cat"}, _turn(tiny_image(2))]
"""

# run each block with its README line numbers, so a failure's traceback points into README.md
RUNNER = """
import json, sys
namespace = {"__name__": "__readme__"}
exec(sys.argv[1], namespace)
for start, code in json.loads(open(sys.argv[2]).read()):
    exec(compile("\\n" * (start - 1) + code, "README.md", "exec"), namespace)
made = {k: type(v).__name__ for k, v in namespace.items() if k in ("answer", "reply", "icl", "bank")}
open("names-made.json", "w").write(json.dumps(made))  # not stdout: the examples print there
"""


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block."""
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, match.start(1)) + 1, match.group(1)))
    return blocks


@pytest.fixture(scope="module")
def server(saved_llava):
    """`aim-icl serve` on the tiny LLaVA and its projector (loopback, no key, as the README's client assumes)."""
    model, projector = str(saved_llava.model), str(saved_llava.projector)
    with serving("--model", model, "--projector", projector, "--max-new-tokens", "4") as url:
        yield url


def test_the_readme_has_python_examples():
    assert len(python_blocks(README.read_text())) >= 4


def test_readme_python_examples_run(saved_llava, server, tmp_path):
    substitutions = {
        "llava-hf/llava-v1.6-mistral-7b-hf": str(saved_llava.model),
        "path/to/projector": str(saved_llava.projector),
        "http://127.0.0.1:8000/v1": f"{server}/v1",
    }
    text = README.read_text()
    unused = [name for name in substitutions if name not in text]
    assert not unused, f"README no longer names {unused}: drop them from the substitutions"
    for name, value in substitutions.items():
        text = text.replace(name, value)
    (tmp_path / "blocks.json").write_text(json.dumps(python_blocks(text)))
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, PLACEHOLDERS, "blocks.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # the names the examples promise: answers are text, the client got completions, the bank was made
    made = json.loads((tmp_path / "names-made.json").read_text())
    assert made == {"answer": "str", "reply": "ChatCompletion", "icl": "ChatCompletion", "bank": "DemoBank"}
    assert (tmp_path / "bank.sqlite").is_file()
