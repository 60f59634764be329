"""Show what the projector wrote: each fused token of each demo read as its nearest vocabulary tokens.

Without `--demo`, reads three demos of the embedded world (a red circle, a blue star and a green square, each
"this is a manek ."): with a trained projector the slots before the name carry the image's shape and colour.
"""

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

WORLD_DEMOS = (("red", "circle"), ("blue", "star"), ("green", "square"))
WORLD_TEXT = "this is a manek ."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_demo_argument(parser, "a demonstration to read (repeatable; default: three world demos)")
    parser.add_argument(
        "--top", type=positive_int, default=3, help="nearest vocabulary tokens shown per slot"
    )
    parser.add_argument("--seed", type=int, default=0, help="draws the world demos' scenes")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from aim_icl.core.demo import Demo, load_image
    from aim_icl.core.readout import read_fused_tokens, readout_table

    placement = model_placement(args)
    if args.demo:
        demos = [Demo(load_image(image), text) for image, text in args.demo]
        titles = [f"demo {i + 1}: {image}" for i, (image, _) in enumerate(args.demo)]
    else:
        demos, titles = world_demos(args.seed), [f"{c} {s}" for c, s in WORLD_DEMOS]
    aim = load_aim(args.model, args.projector, **placement)
    for title, readings in zip(titles, read_fused_tokens(aim, demos, args.top)):
        print(readout_table([decoded(r, aim.encoder.tokenizer) for r in readings], title), end="\n\n")
    return 0


def decoded(reading, tokenizer):
    """The reading with its tokens as text (`picture`, not the tokenizer's piece `Ġpicture`)."""
    from dataclasses import replace

    def text(piece: str) -> str:
        word = tokenizer.convert_tokens_to_string([piece])
        return word.strip() or repr(word)  # a whitespace token shows as '\n', ' '

    return replace(reading, token=text(reading.token), nearest=tuple(text(t) for t in reading.nearest))


def world_demos(seed: int) -> list:
    import random

    from aim_icl.core.demo import Demo
    from aim_icl.world.scene import sample_scene

    rng = random.Random(seed)
    return [Demo(sample_scene(rng, shape=s, colour=c).render(), WORLD_TEXT) for c, s in WORLD_DEMOS]
