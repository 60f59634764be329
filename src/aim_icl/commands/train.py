"""Train the AIM projector on interleaved image-text documents (OBELICS or MMC4 style, or WebDataset shards).

Runs on CPU, one GPU or many: `accelerate launch -m aim_icl.cli train ...` (or torchrun) for several processes.
Every option can also be set in a YAML file (--config); flags given here win. The output directory is a saved
projector: `AIM.from_pretrained(model, projector=OUTPUT)` or `aim-icl generate --projector OUTPUT`.
"""

from __future__ import annotations

import argparse

from aim_icl.train.config import add_config_arguments, load_config

EXTRA = "train"  # the optional extra this verb runs on (the CLI checks it first)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file setting any option below (nested data:/optim: or flat)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from aim_icl.train.trainer import train  # accelerate and the readers load only for this verb

    overrides = {k: v for k, v in vars(args).items() if k not in ("verb", "config")}
    train(load_config(args.config, overrides))
    return 0
