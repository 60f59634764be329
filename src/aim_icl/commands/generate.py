"""Answer one image + prompt with demonstrations, in any of the four modes, and print the answer."""

from __future__ import annotations

import argparse

from aim_icl.commands._model import (
    add_demo_argument,
    add_device_arguments,
    add_model_arguments,
    load_aim,
    model_placement,
    positive_int,
)
from aim_icl.core.modes import MODE_TABLE, MODES
from aim_icl.errors import AIMError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--image", required=True, help="query image file")
    parser.add_argument("--prompt", required=True, help="query text, e.g. 'Question: what is it? Answer:'")
    add_demo_argument(parser, "a demonstration (repeatable)")
    parser.add_argument(
        "--mode", choices=MODES, default="aim", help="zero (no demos), text, icl (demo images) or aim (fused)"
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=32, help="longest answer, in tokens")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from aim_icl.core.demo import Demo, load_image

    if args.demo and not MODE_TABLE[args.mode].demos:
        raise AIMError(f"--mode {args.mode} reads no demonstrations: drop --demo or pick text, icl or aim")
    placement = model_placement(args)
    query = load_image(args.image)  # read inputs before loading a model that may take minutes
    demos = [Demo(load_image(image), text) for image, text in args.demo]
    aim = load_aim(args.model, args.projector, **placement)
    print(aim.generate(query, args.prompt, demos=demos, mode=args.mode, max_new_tokens=args.max_new_tokens))
    return 0
