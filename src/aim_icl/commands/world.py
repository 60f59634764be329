"""The embedded synthetic world: pretrain its tiny MLLM, dump its corpora, train and measure its AIM projector.

`aim-icl world pretrain` reproduces the shipped model (seeded; about 20 minutes on 2 CPU cores);
`aim-icl world data` writes a corpus as OBELICS-style JSONL (corpus `interleaved` is what the projector trains on);
`aim-icl world check` measures single-image QA and binding read from text (what `aim` mode can reach at best);
`aim-icl world export --lmms-eval DIR` writes the world tasks as lmms-eval tasks (YAMLs + local data).
The projector is trained by `aim-icl train` on the `interleaved` export; `aim-icl demo` evaluates both.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from aim_icl.commands._model import add_output_argument
from aim_icl.errors import AIMError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="<action>")
    for name, (add, _, help_text) in ACTIONS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(getattr(args, "threads", 2))
    return ACTIONS[args.action][1](args)


# -- pretrain ------------------------------------------------------------------------------------------------


def _add_pretrain(p: argparse.ArgumentParser) -> None:
    add_output_argument(
        p, "directory for the model + processor (HF format)", old="--out", required=True, type=Path
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vision-steps", type=int, help="stage 1 steps (default: the recipe's)")
    p.add_argument(
        "--lm-steps", type=int, help="stage 2 steps, the curriculum scaled to them (default: 5500)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in --output")
    _add_threads(p)


def _pretrain(args: argparse.Namespace) -> int:
    from aim_icl.world.checkpoint import save_model
    from aim_icl.world.pretrain import PretrainConfig, pretrain

    if (args.output / "config.json").exists() and not args.overwrite:
        raise AIMError(
            f"{args.output} already holds a model; pass --overwrite to replace it or choose another --output"
        )
    config = PretrainConfig(seed=args.seed)
    if args.vision_steps is not None:
        config = replace(config, vision_steps=args.vision_steps)
    if args.lm_steps is not None:
        config = config.with_lm_steps(args.lm_steps)
    model, processor, record = pretrain(config)
    save_model(model, processor, args.output, record)
    print(json.dumps(record["metrics"]), f"({record['seconds']:.0f} s) -> {args.output}")
    return 0


# -- data ----------------------------------------------------------------------------------------------------


def _add_data(p: argparse.ArgumentParser) -> None:
    from aim_icl.world.corpora import CORPORA

    p.add_argument("--corpus", choices=list(CORPORA), default="interleaved")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=1000, help="number of documents")
    add_output_argument(p, "directory for <corpus>.jsonl and images/", old="--out", required=True, type=Path)
    _add_threads(p)


def _data(args: argparse.Namespace) -> int:
    from aim_icl.world.export import export_corpus

    if args.n < 1:
        raise AIMError("--n must be at least 1")
    print(export_corpus(args.corpus, args.seed, args.n, args.output))
    return 0


# -- check ---------------------------------------------------------------------------------------------------


def _add_check(p: argparse.ArgumentParser) -> None:
    _add_model(p)
    p.add_argument("--seed", type=int, default=1, help="draws the checked items")
    p.add_argument("--n", type=int, default=200, help="items per measurement")
    _add_threads(p)


def _check(args: argparse.Namespace) -> int:
    import logging

    from aim_icl.world import formats
    from aim_icl.world.checkpoint import load_shipped
    from aim_icl.world.measure import qa_accuracy, text_binding

    logging.getLogger("aim_icl").setLevel(logging.ERROR)  # no projector needed: text and zero modes
    aim = load_shipped(args.model, with_projector=False)
    qa = qa_accuracy(aim, args.seed, args.n)
    print("single-image QA accuracy:", " ".join(f"{k}={v:.3f}" for k, v in qa.items()))
    print("binding read from text, 2-way, held-out names (ranking accuracy):")
    for binding in formats.BINDINGS:
        print(f"  {text_binding(aim, args.seed, binding, args.n):.3f}  {binding}")
    return 0


# -- ship ----------------------------------------------------------------------------------------------------


def _add_ship(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="a model `aim-icl world pretrain` wrote")
    p.add_argument(
        "--projector", type=Path, required=True, help="the --output of `aim-icl train` on that model"
    )
    p.add_argument("--to", type=Path, help="destination (default: the package's shipped checkpoint)")


def _ship(args: argparse.Namespace) -> int:
    from aim_icl.world.checkpoint import CHECKPOINT_DIR, ship

    ship(args.model, args.projector, args.to or CHECKPOINT_DIR)
    print(f"shipped {args.model} + {args.projector} -> {args.to or CHECKPOINT_DIR}")
    return 0


# -- export --------------------------------------------------------------------------------------------------


def _add_export(p: argparse.ArgumentParser) -> None:
    from aim_icl.integrations.lmms_eval.export import TASKS

    p.add_argument(
        "--lmms-eval",
        type=Path,
        required=True,
        metavar="DIR",
        help="write lmms-eval task YAMLs and their data here (run them with lmms-eval --include_path DIR)",
    )
    p.add_argument("--seed", type=int, default=0, help="draws the items (names, objects, demos)")
    p.add_argument("--items", type=int, default=200, help="queries per task")
    p.add_argument(
        "--max-shots", type=int, help="demos per query (default: the task's, 64 for the 16-way task)"
    )
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    _add_threads(p)


def _export(args: argparse.Namespace) -> int:
    from aim_icl.integrations.lmms_eval.export import export

    names = export(args.lmms_eval, args.seed, args.items, args.tasks, args.max_shots)
    print(f"wrote {' '.join(names)} to {args.lmms_eval}; run: lmms-eval --include_path {args.lmms_eval} ...")
    return 0


# -- shared --------------------------------------------------------------------------------------------------


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="world model directory (default: the shipped checkpoint)")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")


ACTIONS = {
    "pretrain": (_add_pretrain, _pretrain, "pretrain the world's tiny MLLM (corpora 1-3, seeded)"),
    "data": (_add_data, _data, "write a world corpus as OBELICS-style JSONL + PNG images"),
    "check": (_add_check, _check, "single-image QA accuracy and binding read from text"),
    "ship": (
        _add_ship,
        _ship,
        "copy a pretrained model and its trained projector into the package, fingerprinted",
    ),
    "export": (_add_export, _export, "write the world tasks as lmms-eval task YAMLs + local data (offline)"),
}
