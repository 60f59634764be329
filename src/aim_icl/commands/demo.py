"""Show what AIM saves: prompt tokens per mode and shot count at real LLaVA-Next and Qwen2-VL image geometry.

(Interim main job: the embedded synthetic world, with quality next to cost, replaces it.)
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 4, 16], help="shot counts to compare")


def run(args: argparse.Namespace) -> int:
    from aim_icl.testing.geometry import token_table

    logging.getLogger("aim_icl").setLevel(logging.ERROR)
    print("Prompt tokens (tiny-width models with the real processors and image geometry):\n")
    print(token_table(args.shots))
    return 0
