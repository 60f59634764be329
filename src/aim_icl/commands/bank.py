"""Build, describe, list and merge Demonstration Banks (each demo read through the backbone once, then reused).

aim-icl bank build --model DIR --demos demos.jsonl --bank bank.sqlite   (rerun to resume; accelerate launch splits it)
aim-icl bank info bank.sqlite
aim-icl bank list bank.sqlite --limit 20
aim-icl bank merge bank.sqlite shard1.sqlite shard2.sqlite
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aim_icl.commands._model import (
    add_alias,
    add_device_arguments,
    add_model_arguments,
    load_aim,
    model_placement,
    positive_int,
)
from aim_icl.core.dtypes import FLOAT_DTYPES
from aim_icl.errors import AIMError

BUILD_DESCRIPTION = """Read every demo of a JSONL file through the frozen backbone once and store it in the bank.

Each line: {"image": path (relative to the JSONL file), "text": ..., any other fields kept as metadata}.
Demos already stored are skipped, so rerunning a killed build completes it; bad lines are skipped and reported.
`accelerate launch --num_processes N -m aim_icl.cli bank build ...` splits the file over N processes (one shard
file each, merged into the bank at the end)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", required=True, metavar="<action>")
    build = sub.add_parser(
        "build",
        help="read a JSONL demo file into a bank (incremental, resumable)",
        description=BUILD_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(build, projector=False)  # the bank stores pre-projector states
    build.add_argument("--demos", required=True, help='JSONL file, one {"image": path, "text": ...} per line')
    build.add_argument("--bank", required=True, help="bank file (created if missing)")
    build.add_argument("--batch-size", type=positive_int, default=8, help="demos read per forward pass")
    build.add_argument(
        "--states-dtype", choices=FLOAT_DTYPES, default="float16", help="dtype of the stored hidden states"
    )
    build.add_argument("--layer", type=int, default=-1, help="hidden-state layer the projector reads")
    add_device_arguments(build)
    add_alias(build, "--model-dtype", "dtype", choices=FLOAT_DTYPES)
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    info = sub.add_parser("info", help="what a bank holds and which backbone it is bound to")
    info.add_argument("bank")
    listing = sub.add_parser("list", help="the stored demos: key, tokens, metadata, text")
    listing.add_argument("bank")
    listing.add_argument("--limit", type=int, default=20, help="rows to show (0: all)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    merge = sub.add_parser("merge", help="merge bank files built with the same backbone into one")
    merge.add_argument("bank", help="target bank (created with the first shard's backbone if missing)")
    merge.add_argument("shards", nargs="+", help="banks to merge into it (left in place)")


def run(args: argparse.Namespace) -> int:
    return {"build": _build, "info": _info, "list": _list, "merge": _merge}[args.action](args)


def _build(args: argparse.Namespace) -> int:
    import torch

    from aim_icl.bank.build import build_bank
    from aim_icl.core.placement import process_state

    placement = model_placement(args)
    if not Path(args.demos).is_file():  # fail before loading a model that may take minutes
        raise AIMError(f"demo file not found: {args.demos}")
    state = process_state(placement["device"])
    aim = load_aim(args.model, **placement, with_projector=False, layer=args.layer)
    states_dtype = getattr(torch, args.states_dtype)
    report = build_bank(
        aim, args.demos, args.bank, args.batch_size, states_dtype, progress=not args.no_progress
    )
    if report.read == 0 and report.skipped:  # nothing built is a failure, not a report
        raise AIMError(
            f"no line of {args.demos} is a usable demo ({len(report.skipped)} skipped; first: "
            f"{report.skipped[0]}); fix the file and rerun"
        )
    if state.is_main_process:
        already = report.read - report.added
        print(
            f"{args.bank}: added {report.added}, already stored {already}, merged {report.merged} from shards, "
            f"skipped {len(report.skipped)}"
        )
        for reason in report.skipped:
            print(f"  skipped {reason}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from aim_icl.bank.store import BankStore

    with BankStore(args.bank) as store:
        summary, fp = store.summary(), store.fingerprint
        first = next(store.rows(limit=1), None)
    size_bytes = sum(
        Path(f"{args.bank}{s}").stat().st_size for s in ("", "-wal") if Path(f"{args.bank}{s}").exists()
    )
    n = summary["demos"]
    lines = [
        f"bank        {args.bank} ({size_bytes / 1e6:.1f} MB, format {summary['format_version']}, created {summary['created']})",
        f"demos       {n} ({summary['with_image']} with an image embedding)",
        f"tokens      {summary['text_tokens']} ({summary['text_tokens'] / max(n, 1):.1f} per demo)",
        f"hidden      {', '.join(summary['hidden_dtypes']) or '-'}"
        + (f", width {first.states.hidden.shape[-1]}" if first is not None else ""),
        f"backbone    {fp['model_type']} {fp['name_or_path'] or '(built in memory)'}, {fp['dtype']}, layer {fp['layer']}",
        f"config      {fp['config_hash'][:16]}   weights {fp['weights_hash'][:16]}",
        f"template    {json.dumps(fp['template'], ensure_ascii=False)}",
    ]
    print("\n".join(lines))
    return 0


def _list(args: argparse.Namespace) -> int:
    from aim_icl.bank.store import BankStore

    with BankStore(args.bank) as store:
        rows = list(store.rows(limit=args.limit or None))
        total = len(store)
    for row in (r.states for r in rows):
        if args.json:
            print(
                json.dumps({"key": row.key, "tokens": len(row.token_ids), "text": row.text, **row.metadata})
            )
        else:
            meta = " ".join(f"{k}={v}" for k, v in row.metadata.items())
            print(f"{row.key[:12]}  {len(row.token_ids):4d} tok  {meta}  {row.text[:60]!r}")
    if not args.json and len(rows) < total:
        print(f"... {total - len(rows)} more (--limit 0 lists all)")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from aim_icl.bank.store import BankStore

    fingerprint = None
    if not Path(args.bank).exists():
        with BankStore(args.shards[0]) as first:
            fingerprint = first.fingerprint
    with BankStore(args.bank, fingerprint) as store:
        for shard in args.shards:
            print(f"{shard}: merged {store.merge(shard)} new demos")
        print(f"{args.bank}: {len(store)} demos")
    return 0
