"""Train the AIM projector on interleaved image-text documents (OBELICS or MMC4 style, or WebDataset shards).

Runs on CPU, one GPU or many: `accelerate launch -m aim_icl.cli train ...` (or torchrun) for several processes.
Every option can also be set in a YAML file (--config); flags given here win. The output directory is a saved
projector: `AIM.from_pretrained(model, projector=OUTPUT)` or `aim-icl generate --projector OUTPUT`; with
--push-to-hub ORG/NAME it is uploaded with its model card when training ends (`aim-icl hub push` does it later).
"""

from __future__ import annotations

import argparse

from aim_icl.commands.hub import add_push_arguments
from aim_icl.train.config import add_config_arguments, load_config

EXTRA = "train"  # the optional extra this verb runs on (the CLI checks it first)


# flags of this verb that are not training options: where the trained projector goes afterwards
PUSH_FLAGS = ("push_to_hub", "hub_private", "hub_commit_message")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file setting any option below (nested data:/optim: or flat)")
    add_config_arguments(parser)
    parser.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        help="after training, upload the projector and its model card to this Hugging Face Hub repo",
    )
    add_push_arguments(parser, prefix="hub-")


def run(args: argparse.Namespace) -> int:
    from aim_icl.train.trainer import train  # accelerate and the readers load only for this verb

    overrides = {k: v for k, v in vars(args).items() if k not in ("verb", "config", *PUSH_FLAGS)}
    config = load_config(args.config, overrides)
    if args.push_to_hub:
        from aim_icl.hub.push import check_push_target

        check_push_target(args.push_to_hub)  # a bad target fails now, not after the training
    train(config)
    if args.push_to_hub:
        _push(config.output, args)
    return 0


def _push(output: str, args: argparse.Namespace) -> None:
    from accelerate import PartialState

    from aim_icl.hub.push import push_projector

    if PartialState().is_main_process:  # one upload, whatever the number of training processes
        url = push_projector(
            output, args.push_to_hub, private=args.hub_private, commit_message=args.hub_commit_message
        )
        print(f"pushed {output} to {args.push_to_hub}: {url}")
