#!/usr/bin/env bash
# aim-icl with NO extras (what a plain `pip install aim-icl` gives), in a venv of its own (.venv-bare):
# every verb's --help works, `aim-icl generate` answers on the embedded world model (no download) without
# importing any extra's module, and a verb whose extra is missing says so in one line.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AIM_ICL_BARE_VENV:-.venv-bare}"
py="$venv/bin/python"
start=$SECONDS
[ -x "$py" ] || python3 -m venv "$venv"
"$py" -m pip install -q --upgrade pip
# the CPU torch build, as scripts/setup.sh: an unpinned torch pulls a multi-GB CUDA build
"$py" -c "import torch" 2>/dev/null || "$py" -m pip install -q "torch==${AIM_ICL_TORCH:-2.13.0}"
"$py" -m pip install -q -e .
echo "bare install: $((SECONDS - start)) s"

for verb in "" $("$py" -c "from aim_icl.cli import VERBS; print(*VERBS)"); do
  "$venv/bin/aim-icl" $verb --help > /dev/null
done
echo "every verb's --help: ok"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" - "$tmp" <<'EOF'
# an aim-mode query on the world model: two colour-question demos, then a query object of a third colour
import sys
from pathlib import Path

from aim_icl.world.scene import Scene

out = Path(sys.argv[1])
Scene("circle", "red", "large", "left", 5.0, 1).render().save(out / "demo1.png")
Scene("star", "green", "large", "right", 5.0, 2).render().save(out / "demo2.png")
Scene("square", "blue", "large", "top", 5.0, 3).render().save(out / "query.png")
EOF
"$py" - "$tmp" <<'EOF'
import contextlib
import io
import sys

sys.modules["pydantic"] = None  # pydantic comes here only through typer: generate must not need it
from aim_icl.cli import main  # noqa: E402

tmp = sys.argv[1]
args = ["generate", "--image", f"{tmp}/query.png", "--prompt", "what colour is it ?", "--mode", "aim",
        "--demo", f"{tmp}/demo1.png", "what colour is it ? red .",
        "--demo", f"{tmp}/demo2.png", "what colour is it ? green .", "--max-new-tokens", "2"]  # fmt: skip
with contextlib.redirect_stdout(io.StringIO()) as out:
    assert main(args) == 0, "aim-icl generate failed"
answer = out.getvalue().strip()
assert answer == "blue .", f"aim-icl generate answered {answer!r} for a blue square"
# (yaml and psutil, in extras too, come with transformers and accelerate: core requirements may import them)
extras = [m for m in ("fastapi", "uvicorn", "httpx", "matplotlib", "datasets", "webdataset", "pyarrow") if m in sys.modules]
assert not extras, f"aim-icl generate imported modules of optional extras: {extras}"
print(f"aim-icl generate (world model, aim mode, 2 demos): {answer!r}")
EOF

# a verb whose extra is not installed: exactly one line naming it (skipped if some dependency brought fastapi)
if ! "$py" -c "import fastapi" 2>/dev/null; then
  if "$venv/bin/aim-icl" serve > /dev/null 2> "$tmp/err"; then echo "aim-icl serve ran without [serve]"; exit 1; fi
  [ "$(wc -l < "$tmp/err")" -eq 1 ] && grep -q 'needs the \[serve\] extra' "$tmp/err" || { cat "$tmp/err"; exit 1; }
  echo "aim-icl serve without [serve]: $(cat "$tmp/err")"
fi
echo "bare install check: ok ($((SECONDS - start)) s)"
