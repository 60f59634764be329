"""Answer one image + prompt with demonstrations, in any of the four modes, and print the answer."""

from __future__ import annotations

import argparse
import logging

from aim_icl.commands._model import (
    add_demo_argument,
    add_model_arguments,
    fresh_projector,
    load_aim,
    positive_int,
    torch_device,
)
from aim_icl.core.modes import MODE_TABLE, MODES

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--image", required=True, help="query image file")
    parser.add_argument("--prompt", required=True, help="query text, e.g. 'Question: what is it? Answer:'")
    add_demo_argument(parser, "a demonstration (repeatable)")
    parser.add_argument("--mode", choices=MODES, default="aim")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32)
    parser.add_argument("--device", type=torch_device, default="cpu", help="torch device, e.g. cpu or cuda")


def run(args: argparse.Namespace) -> int:
    from aim_icl.core.demo import Demo, load_image

    query = load_image(args.image)  # read inputs before loading a model that may take minutes
    demos = [Demo(load_image(image), text) for image, text in args.demo]
    aim = load_aim(args.model, args.projector, device=args.device)
    if MODE_TABLE[args.mode].fused and fresh_projector(args.model, args.projector) and demos:
        logger.warning("no --projector: fitting the copy map on the given demos (AIM then ≈ text-only demos)")
        aim.fit_projector(demos)
    print(aim.generate(query, args.prompt, demos=demos, mode=args.mode, max_new_tokens=args.max_new_tokens))
    return 0
