"""What the serving engine's model thread pays per decoding step and per joining request, by rows in flight.

Times `aim_icl.serve.decoder.Decoder` directly (no HTTP, no scheduler): a join (one request's prompt read into a
free slot) and a decoding step of 1, 2, 4, 8 and 16 rows, each the mean of `--repeats` calls after one warm-up.
These two costs bound what any scheduling can give: a long answer takes its steps at the cost of the rows beside it,
plus every other request's join that lands during its life.

Usage: python benchmarks/decoder_steps.py [--smollm2 | --model DIR] [--threads 1] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time

import torch

LONG_QUESTION = "Write a long story about a lighthouse keeper and a storm."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the embedded world model)")
    parser.add_argument("--smollm2", action="store_true", help="the SmolLM2-135M-Instruct LLaVA")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the load test's servers use 1)"
    )
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from aim_icl.models import load_aim
    from aim_icl.serve.decoder import Decoder
    from aim_icl.testing.tiny import tiny_image

    if args.smollm2:
        from serve_load import smollm2_directory

        args.model = str(smollm2_directory())
    aim = load_aim(args.model, device="cpu")
    prompt = aim.build_inputs(tiny_image(0), LONG_QUESTION, [], "zero")
    decoder = Decoder(aim, 16)
    decoder.join([prompt])  # warm-up
    join_ms = timed(lambda: decoder.join([prompt]), args.repeats, lambda: decoder.leave(decoder.rows - 1))
    print(f"model: {args.model or 'embedded world model'}, {args.threads} torch thread(s)")
    print(f"join (a {prompt['input_ids'].shape[1]}-token prompt with its image): {join_ms:.1f} ms")
    print(f"{'rows':>4}  {'step ms':>7}  {'ms per row':>10}")
    for rows in (1, 2, 4, 8, 16):
        while decoder.rows < rows:
            decoder.join([prompt])
        while decoder.rows > rows:
            decoder.leave(decoder.rows - 1)
        tokens = torch.zeros(rows, dtype=torch.long)
        decoder.step(tokens)  # warm-up at this width
        step_ms = timed(lambda: decoder.step(tokens), args.repeats)  # noqa: B023 - called right here
        print(f"{rows:>4}  {step_ms:>7.1f}  {step_ms / rows:>10.1f}")


def timed(call, repeats: int, undo=lambda: None) -> float:
    """Mean milliseconds of `call` over `repeats` calls (`undo` after each, untimed)."""
    total = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        total += time.perf_counter() - start
        undo()
    return total / repeats * 1000


if __name__ == "__main__":
    main()
