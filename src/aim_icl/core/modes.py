"""The four prompt modes and what each means, in one table (no heavy imports: the CLI declares its choices from it).

Every rule that differs between modes reads this table rather than a mode's name: whether demos are allowed, whether
their images enter the prompt, whether their slots hold fused vectors, whether a prefix cache can serve the mode.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    demos: bool  # takes demonstrations at all
    demo_images: bool  # every demo's image in the prompt (icl): demos must be `Demo`s with images
    fused: bool  # demo slots hold projected states, written into `inputs_embeds` (aim)
    prefix_cached: (
        bool  # a fixed demo list's prompt prefix can be computed once (no demo image before the query)
    )


MODE_TABLE = {
    m.name: m
    for m in (
        Mode("zero", demos=False, demo_images=False, fused=False, prefix_cached=True),  # no demos
        Mode("text", demos=True, demo_images=False, fused=False, prefix_cached=True),  # demo texts only
        Mode(
            "icl", demos=True, demo_images=True, fused=False, prefix_cached=False
        ),  # demo images in the prompt
        Mode("aim", demos=True, demo_images=False, fused=True, prefix_cached=True),  # fused tokens
    )
}
MODES = tuple(MODE_TABLE)


def mode_of(name: str) -> Mode:
    """The mode called `name`; an unknown name is one error line listing the modes."""
    if name not in MODE_TABLE:
        from aim_icl.errors import AIMError

        raise AIMError(f"unknown mode {name!r}; use one of {', '.join(MODES)}")
    return MODE_TABLE[name]
