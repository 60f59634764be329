"""`aim-icl <verb>`: one small module per verb under `aim_icl.commands`, and a `main(argv)` tests can call."""

from __future__ import annotations

import argparse
import importlib
import sys

from aim_icl.errors import AIMError

VERBS = {
    "generate": "answer one query with demonstrations in any mode",
    "demo": "the main job on the embedded default",
    "world": "the embedded synthetic world: pretrain its tiny MLLM, dump corpora, train and measure",
    "train": "train the AIM projector on interleaved image-text corpora",
    "eval": "measure modes and shot counts on a benchmark: quality, prompt tokens, memory, latency",
    "bank": "build, describe, list and merge Demonstration Banks",
    "serve": "serve a model over HTTP: OpenAI-compatible chat completions with AIM demos, tasks, metrics",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aim-icl", description="Many-shot multimodal ICL with AIM fused tokens."
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for verb, help_text in VERBS.items():
        module = importlib.import_module(f"aim_icl.commands.{verb}")
        module.add_arguments(sub.add_parser(verb, help=help_text, description=module.__doc__))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"aim_icl.commands.{args.verb}")
    try:
        return module.run(args) or 0
    except AIMError as err:
        print(f"aim-icl {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
