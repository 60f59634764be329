"""Share projectors on the Hugging Face Hub: write a projector's model card, or upload it with its card.

aim-icl hub card DIR [--results results.json]     writes DIR/README.md (or --output): the card, to read or edit
aim-icl hub push DIR org/name [--dry-run]         one commit: projector.safetensors, projector_config.json and
                                                  the card (DIR's README.md if it has one, else a fresh card)
Loading needs no verb: `--projector org/name` (or `org/name@revision`) works wherever a projector directory does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aim_icl.commands._model import add_output_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", required=True, metavar="<action>")
    card = sub.add_parser("card", help="write a projector's model card (README.md) without uploading")
    card.add_argument(
        "directory", type=Path, help="a saved projector (aim-icl train --output, save_projector)"
    )
    add_output_argument(card, "file or folder to write to (default: DIR/README.md)", old="--out", type=Path)
    card.add_argument(
        "--repo-id", help="the repo the card's usage snippet loads from (default: <org>/<name>)"
    )
    add_card_arguments(card)
    push = sub.add_parser("push", help="upload a saved projector and its card to a Hub repo")
    push.add_argument(
        "directory", type=Path, help="a saved projector (aim-icl train --output, save_projector)"
    )
    push.add_argument("repo_id", help="Hub repo id, org/name (created if missing)")
    add_push_arguments(push)
    add_card_arguments(push)
    push.add_argument("--revision", help="branch to commit to (default: the repo's main branch)")
    push.add_argument("--dry-run", action="store_true", help="list the commit's files; upload nothing")


def add_push_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--private and --commit-message (`prefix`: `hub-` where another verb lends them)."""
    parser.add_argument(
        f"--{prefix}private",
        action="store_true",
        default=None,
        help="create the repo private (default: public)",
    )
    parser.add_argument(f"--{prefix}commit-message", help="(default: 'Upload AIM projector')")


def add_card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", type=Path, help="an aim-icl eval results.json: the card's evaluation table"
    )
    parser.add_argument("--base-model", help="Hub id of the backbone (default: the one the projector names)")
    parser.add_argument(
        "--dataset", action="append", default=[], help="Hub id of a training dataset (repeatable)"
    )
    parser.add_argument(
        "--model",
        help="the backbone (directory or hub id): loaded to check that the projector fits it and to put its "
        "fingerprint (config and weights hashes) on the card",
    )


def card_options(args: argparse.Namespace) -> dict:
    from aim_icl.hub.card import read_results

    results = read_results(args.results) if args.results else None
    options = {"results": results, "base_model": args.base_model, "datasets": args.dataset}
    if args.model:
        from aim_icl.bank.fingerprint import backbone_fingerprint
        from aim_icl.commands._model import load_aim

        options["fingerprint"] = backbone_fingerprint(load_aim(args.model, str(args.directory)))
    return options


def run(args: argparse.Namespace) -> int:
    from aim_icl.hub import card, push

    options = card_options(args)
    if args.action == "card":
        path = card.write_card(card.read_saved(args.directory), args.output, repo_id=args.repo_id, **options)
        print(f"wrote {path}")
        return 0
    if args.dry_run:
        base_model = options.pop("base_model")
        operations = push.upload_operations(args.directory, args.repo_id, base_model, **options)
        print(f"would commit to {args.repo_id}:")
        print("\n".join(f"  {line}" for line in push.describe_operations(operations)))
        return 0
    url = push.push_projector(
        args.directory,
        args.repo_id,
        private=args.private,
        commit_message=args.commit_message,
        revision=args.revision,
        **options,
    )
    print(f"pushed {args.directory} to {args.repo_id}: {url}")
    return 0
