"""AIM's invariants on an accelerator, per family and dtype: the check to run once on a GPU machine.

For every tiny family: the fused-embedding path against text mode (logit gap), batched against one-by-one reading,
a training step (loss, gradients reach the projector only), generation in all four modes, and time per query.
Usage: python benchmarks/device_check.py [--device cuda] [--dtypes float32 bfloat16] [--families llava ...]
"""

from __future__ import annotations

import argparse
import time

import torch

from aim_icl import AIM, MODES, Demo
from aim_icl.testing.tiny import FAMILIES, build_tiny, tiny_image

QUERY = "question: what is it? answer:"


def demos(k: int, seed: int = 0) -> list[Demo]:
    return [Demo(tiny_image(seed + i), f"question: what is it? answer: a red circle {i}") for i in range(k)]


def check(family: str, device: str, dtype: torch.dtype) -> dict:
    model, processor = build_tiny(family)
    aim = AIM(model.to(device, dtype), processor, projector_name="residual")
    aim.fit_projector(demos(8, seed=50))
    shots = demos(3)
    as_vectors = [aim.backbone.embed(aim.encoder.text_ids(d.text)) for d in shots]
    with torch.no_grad():
        text = aim.model(**aim.build_inputs(tiny_image(9), QUERY, shots, "text")).logits.float()
        virtual = aim.forward(aim.build_inputs(tiny_image(9), QUERY, as_vectors, "aim")).logits.float()
    batched, single = aim.encode(shots, batch_size=3), [aim.encode([d])[0] for d in shots]
    inputs = aim.build_inputs(tiny_image(9), QUERY, shots, "aim", target="red circle")
    loss = aim.forward(inputs).loss
    loss.backward()
    grads = sum(p.grad.abs().sum().item() for p in aim.projector.parameters() if p.grad is not None)
    times = {}
    for mode in MODES:
        start = time.perf_counter()
        aim.generate(tiny_image(9), QUERY, shots if mode != "zero" else [], mode=mode, max_new_tokens=4)
        times[mode] = (time.perf_counter() - start) * 1e3
    return {
        "family": family,
        "dtype": str(dtype).removeprefix("torch."),
        "embed_path_gap": (virtual - text).abs().max().item(),
        "batch_gap": max((a.hidden - b.hidden).abs().max().item() for a, b in zip(batched, single)),
        "loss": loss.item(),
        "projector_grad": grads,
        "backbone_grads": sum(p.grad is not None for p in aim.model.parameters()),
        **{f"{m}_ms": t for m, t in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    args = parser.parse_args()
    print(f"device {args.device}: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}")
    columns = ["family", "dtype", "embed_path_gap", "batch_gap", "loss", "projector_grad", "backbone_grads"]
    columns += [f"{m}_ms" for m in MODES]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for dtype in args.dtypes:
        for family in args.families:
            try:
                row = check(family, args.device, getattr(torch, dtype))
                cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
            except Exception as err:  # report and go on: one family must not hide the others
                cells = [family, dtype, f"FAILED: {type(err).__name__}: {str(err).splitlines()[0][:120]}"]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
