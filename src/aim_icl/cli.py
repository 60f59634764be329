"""`aim-icl <verb>`: one small module per verb under `aim_icl.commands`, and a `main(argv)` tests can call.

A verb module declares its arguments with light imports only and imports what it runs inside `run`, so `--help`
starts without torch, transformers or an optional extra; a verb whose extra is missing says which one to install.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from aim_icl.errors import AIMError, MissingDependency, check_extra

VERBS = {
    "generate": "answer one query with demonstrations in any mode",
    "demo": "the main job on the embedded default",
    "inspect": "show what the projector wrote: fused tokens read as their nearest vocabulary tokens",
    "world": "the embedded synthetic world: pretrain its tiny MLLM, dump corpora, train and measure",
    "train": "train the AIM projector on interleaved image-text corpora",
    "eval": "measure modes and shot counts on a benchmark: quality, prompt tokens, memory, latency",
    "bank": "build, describe, list and merge Demonstration Banks",
    "serve": "serve a model over HTTP: OpenAI-compatible chat completions with AIM demos, tasks, metrics",
    "hub": "share projectors on the Hugging Face Hub: model cards and uploads",
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; given `verb`, only that verb's module is imported for its arguments (the others are listed
    by name), so one verb's imports never slow or break another."""
    parser = argparse.ArgumentParser(
        prog="aim-icl", description="Many-shot multimodal ICL with AIM fused tokens."
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for name, help_text in VERBS.items():
        if verb not in (None, name):
            sub.add_parser(name, help=help_text)
            continue
        module = _command(name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__))
    show_defaults(parser)
    return parser


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Write each option's default into its --help line, in every verb and action (as
    ArgumentDefaultsHelpFormatter does, without its "(default: None)" and "(default: False)" noise, and never
    a secret such as an API key read from the environment)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                show_defaults(subparser)
            continue
        default, text = action.default, action.help or ""
        secret = bool({"key", "token", "secret", "password"} & set(action.dest.split("_")))
        unset = default is None or default is False or default == [] or default is argparse.SUPPRESS
        if not action.option_strings or unset or secret or text is argparse.SUPPRESS or "default" in text:
            continue
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        action.help = f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if not a.startswith("-")), "")  # the top level takes no option but --help
    args = build_parser(verb).parse_args(argv)
    command = _command(args.verb)
    extra = getattr(command, "EXTRA", None)  # the optional extra the verb runs on, if any
    try:
        if extra:
            check_extra(extra)
        return command.run(args) or 0
    except ModuleNotFoundError as err:
        # a module of an optional extra: one line naming the extra; any other missing module is a bug
        error = MissingDependency.from_import_error(err, prefer=extra)
        if error is None:
            raise
    except AIMError as err:
        error = err
    print(f"aim-icl {args.verb}: error: {error}", file=sys.stderr)
    return 2


def _command(verb: str):
    return importlib.import_module(f"aim_icl.commands.{verb}")


if __name__ == "__main__":
    sys.exit(main())
