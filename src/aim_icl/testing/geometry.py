"""Prompt tokens per mode and shot count at real image geometries (tiny width, real processors).

LLaVA-Next: 336-px CLIP patches, llava-v1.6 grid pinpoints, 672x672 images. Qwen2-VL: its real processor at 448x448.
"""

from __future__ import annotations

from aim_icl.core.aim import AIM
from aim_icl.core.demo import Demo
from aim_icl.core.modes import MODE_TABLE, MODES
from aim_icl.testing.tiny import build_tiny, tiny_image

GEOMETRIES = {"llava_next": (672, 672), "qwen2_vl": (448, 448)}
TEXT = "Question: what is in the picture? Answer: a red circle"
QUERY = "Question: what is in the picture? Answer:"


def count_tokens(family: str, size: tuple[int, int], shots: list[int]) -> list[dict]:
    """One row per shot count: the prompt length of each mode."""
    model, processor = build_tiny(
        family, real_geometry=True, text_config={"max_position_embeddings": 1 << 20}
    )
    aim = AIM(model, processor)  # a fresh projector: prompt lengths do not depend on its weights
    demos = [Demo(tiny_image(i, size=size), TEXT) for i in range(max(shots))]
    rows = []
    for k in shots:
        row = {"family": family, "image": f"{size[0]}x{size[1]}", "shots": k}
        for mode in MODES:
            inputs = aim.build_inputs(
                tiny_image(999, size=size), QUERY, demos[:k] if MODE_TABLE[mode].demos else [], mode
            )
            row[mode] = inputs["input_ids"].shape[1]
        rows.append(row)
    return rows


def token_table(shots: list[int]) -> str:
    """A Markdown table of `count_tokens` over every geometry."""
    lines = [
        "| model geometry | image | shots | zero | text | icl | aim | icl / aim |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for family, size in GEOMETRIES.items():
        for r in count_tokens(family, size, shots):
            lines.append(f"| {family} | {r['image']} | {r['shots']} | {r['zero']:,} | {r['text']:,} | {r['icl']:,} | "
                         f"{r['aim']:,} | {r['icl'] / r['aim']:.1f}x |")  # fmt: skip
    return "\n".join(lines)
