"""Prompt tokens, peak memory and latency per query: icl vs aim (fresh, bank, bank + prefix cache) by shot count.

Model: a tiny-width LLaVA-Next with its real image geometry (336-px CLIP patches, the v1.6 grid pinpoints, 672x672
images: 2,928 image tokens each), so token counts are the real model's and compute is CPU-sized.
Each (configuration, k) runs in a fresh process forked before any model exists; peak memory is that process's
peak resident set size while it serves its queries (`aim_icl.eval.memory.PeakMemory`: the kernel's VmHWM after a
reset), i.e. everything it holds: Python, torch, model, bank, cache and the query's activations. Latency is the
median wall time per query after one warm-up query (image processing, demo reading or bank lookups, prompt
building and generating `--new-tokens` tokens). Each query is followed by a zero-shot query in the same process,
and the ratio to zero-shot is the median of those pairs' ratios, so load from other processes largely cancels.
With the prefix cache, each query is also followed by the same query through the bank alone (`aim+bank`), and
the median of those ratios says what the cache gains or costs, in wall time and in the process's CPU time (each
process computes on one thread, so on an idle machine both agree; on a loaded one CPU time is the steadier).
icl runs only while its prompt fits `--max-tokens` (default 32,768: llava-v1.6-mistral-7b's context) and its
process stays under `--memory-budget-gib`; beyond that it is reported as not fitting.

Usage: python benchmarks/efficiency.py [--shots 0 1 2 4 8 16 32] [--queries 5] [--out benchmarks/efficiency.png]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import psutil
import torch

from aim_icl import AIM, Demo, PrefixCache
from aim_icl.eval.memory import PeakMemory
from aim_icl.testing.tiny import build_tiny, tiny_image

try:
    from aim_icl.bank import DemoBank
except ImportError:  # the bank is optional here: precomputed states held in memory stand in for it
    DemoBank = None

CONFIGS = ("icl", "aim", "aim+bank", "aim+bank+prefix")
TINY_WIDTH = 64  # the tiny builder's LM width
DOES_NOT_FIT = ("prompt of", "over the")  # how a run skipped or stopped for its length or memory is reported
HEAVY = ("icl", "aim")  # configurations that read every demo image per query: fewer timed queries
SIZE = (672, 672)
CONTEXT = 32_768  # max_position_embeddings of llava-v1.6-mistral-7b, the checkpoint whose geometry this is
# KV cache bytes per token at Mistral-7B: K and V x 32 layers x 8 KV heads x 128 dims x 2 bytes (fp16)
KV_BYTES_7B = 2 * 32 * 8 * 128 * 2
MIB = 2**20
QUERY = "Question: what is in the picture? Answer:"
ANSWERS = (
    "a red circle",
    "two small dogs on the grass",
    "a blue car next to a house",
    "yes",
    "the man is left",
)


def build_aim(width: int, projector: Path | None = None) -> AIM:
    """The tiny LLaVA-Next at real image geometry; `width` > 64 widens its LM (heads of 64 dims)."""
    text = {"max_position_embeddings": 1 << 17}
    if width != TINY_WIDTH:
        text.update(hidden_size=width, intermediate_size=4 * width, num_attention_heads=width // 64)
        text.update(num_key_value_heads=max(1, width // 256))
    model, processor = build_tiny("llava_next", real_geometry=True, text_config=text)
    return AIM(model, processor, projector=projector, projector_name="residual")  # prepare fits its copy map


def make_demos(n: int) -> list[Demo]:
    return [Demo(tiny_image(i, size=SIZE), f"{QUERY} {ANSWERS[i % len(ANSWERS)]}") for i in range(n)]


# -- child processes ----------------------------------------------------------------------------------------------


def prepare(workdir: Path, n_demos: int, width: int) -> dict:
    """Fit and save the projector, store the demos' states (bank), count prompt tokens for every k."""
    aim = build_aim(width)
    demos = make_demos(n_demos)
    aim.fit_projector(demos[:4])
    aim.save_projector(workdir / "projector")
    start = time.perf_counter()
    if DemoBank is not None:
        with DemoBank(workdir / "bank.sqlite", aim) as bank:
            keys, states = bank.add(demos, progress=False), None
    else:
        keys, states = list(range(n_demos)), aim.encode(demos)
    bank_s = time.perf_counter() - start
    query = tiny_image(10_000, size=SIZE)
    zero = aim.build_inputs(query, QUERY, [], "zero")["input_ids"]
    image_tokens = int((zero == aim.backbone.image_token_id).sum())
    text = {
        k: aim.build_inputs(query, QUERY, demos[:k], "text")["input_ids"].shape[1] for k in range(n_demos + 1)
    }
    icl = {k: n + k * image_tokens for k, n in text.items()}  # an icl demo: its text demo + its image
    few = min(2, n_demos)  # check that rule where building the prompt is cheap
    built = aim.build_inputs(query, QUERY, demos[:few], "icl")["input_ids"].shape[1]
    if built != icl[few]:
        raise RuntimeError(f"icl prompt at k={few} is {built} tokens, not the {icl[few]} counted")
    return dict(
        keys=keys, states=states, bank_s=bank_s, image_tokens=image_tokens, aim_tokens=text, icl_tokens=icl
    )


def measure(
    config: str, k: int, workdir: Path, prepared: dict, n_queries: int, new_tokens: int, width: int
) -> dict:
    """Serve a warm-up and n_queries queries, each followed by a zero-shot query: timings and the peak memory.

    Alternating config and zero-shot queries exposes both to the same load from other processes; zero-shot queries
    do a subset of a configuration's work, so the peak over the whole block is the configuration's.
    """
    torch.set_num_threads(1)
    aim = build_aim(width, workdir / "projector")
    ask, cache = _asker(aim, config, k, workdir, prepared)
    bank = _asker(aim, "aim+bank", k, workdir, prepared)[0] if cache is not None else None
    images = [tiny_image(10_000 + i, size=SIZE) for i in range(n_queries + 1)]
    greedy = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    setup = psutil.Process().memory_info().rss / MIB  # Python, torch, model, demos or bank, before any query
    rounds = []
    with PeakMemory("cpu") as peak:
        for image in images:  # the first round warms up (and builds the prefix cache): not timed
            answer = _timed(lambda image=image: ask(image, greedy))
            zero = _timed(lambda image=image: aim.generate(image, QUERY, [], "zero", **greedy))
            plain = _timed(lambda image=image: bank(image, greedy)) if bank else (None, None, None)
            rounds.append((answer, zero, plain))
    timed = rounds[1:]
    return dict(
        peak_mib=peak.mb,
        setup_mib=setup,
        first_s=rounds[0][0][0],
        latency_s=statistics.median(a[0] for a, _, _ in timed),
        ratio=statistics.median(a[0] / z[0] for a, z, _ in timed),
        vs_bank=statistics.median(a[0] / b[0] for a, _, b in timed) if bank else None,
        vs_bank_cpu=statistics.median(a[1] / b[1] for a, _, b in timed) if bank else None,
        answers=[a[2] for a, _, _ in rounds],
        bank_answers=[b[2] for _, _, b in rounds] if bank else None,
        cached=cache.length if cache is not None else None,
    )


def _asker(aim: AIM, config: str, k: int, workdir: Path, prepared: dict):
    """`ask(image, greedy) -> answer` for one configuration (demos prepared as it would), and its prefix cache."""
    if config in HEAVY:
        demos = make_demos(k)
        return lambda image, greedy: aim.generate(image, QUERY, demos, config, **greedy), None
    lookup = _bank_lookup(aim, workdir, prepared, k)
    if config == "aim+bank":
        return lambda image, greedy: aim.generate(image, QUERY, lookup(), "aim", **greedy), None
    cache = PrefixCache(aim, lookup(), mode="aim")
    return lambda image, greedy: cache.generate(image, QUERY, **greedy), cache


def _bank_lookup(aim: AIM, workdir: Path, prepared: dict, k: int):
    """A function returning the first k demos' stored states: from the SQLite bank on every call, or from memory."""
    if DemoBank is None:
        return lambda: prepared["states"][:k]
    bank = DemoBank(workdir / "bank.sqlite", aim)
    keys = prepared["keys"][:k]
    return lambda: [bank.get(key) for key in keys]


def _timed(run) -> tuple[float, float, str]:
    """Wall seconds, this process's CPU seconds, and what `run()` answered."""
    start, cpu = time.perf_counter(), time.process_time()
    answer = run()
    return time.perf_counter() - start, time.process_time() - cpu, answer


# -- orchestration --------------------------------------------------------------------------------------------


def in_child(fn, args: tuple, budget_mib: float) -> dict | str:
    """Run fn(*args) in a forked process; kill it if its resident memory exceeds the budget. Error text on failure."""
    context = mp.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(send, fn, args))
    process.start()
    watched = psutil.Process(process.pid)
    while not receive.poll(0.05):
        try:
            rss = watched.memory_info().rss / MIB
        except psutil.NoSuchProcess:
            return "process died"
        if rss > budget_mib:
            process.kill()
            process.join()
            return f"over the {budget_mib / 1024:.0f} GiB memory budget"
    result = receive.recv()
    process.join()
    return result


def _child_main(send, fn, args) -> None:
    torch.set_num_threads(1)
    try:
        send.send(fn(*args))
    except Exception:  # report any failure to the parent as text, not as a silent hang
        send.send(traceback.format_exc().strip().splitlines()[-1])


def run_all(args, workdir: Path) -> tuple[dict, dict]:
    from tqdm.auto import tqdm

    prepared = in_child(prepare, (workdir, max(args.shots), args.width), args.memory_budget_gib * 1024)
    if isinstance(prepared, str):
        raise SystemExit(f"preparation failed: {prepared}")
    results = {}
    jobs = [(c, k) for c in args.configs for k in args.shots]
    for config, k in tqdm(jobs, desc="configurations", unit="run"):
        if config == "icl" and prepared["icl_tokens"][k] > args.max_tokens:
            results[config, k] = f"prompt of {prepared['icl_tokens'][k]:,} tokens > {args.max_tokens:,}"
            continue
        n = args.heavy_queries if config in HEAVY and k else args.queries
        job = (config, k, workdir, prepared, n, args.new_tokens, args.width)
        results[config, k] = in_child(measure, job, args.memory_budget_gib * 1024)
    return prepared, results


# -- report -------------------------------------------------------------------------------------------------------


def tokens(config: str, k: int, prepared: dict) -> int:
    return prepared["icl_tokens" if config == "icl" else "aim_tokens"][k]


def tables(prepared: dict, results: dict, shots: list[int], configs: list[str]) -> str:
    head = "| k | " + " | ".join(configs) + " |\n|---:|" + "---:|" * len(configs)

    def table(title: str, cell) -> str:
        rows = [f"| {k} | " + " | ".join(cell(c, k) for c in configs) + " |" for k in shots]
        return f"{title}\n\n{head}\n" + "\n".join(rows)

    def token_cell(c, k):
        r, n = results[c, k], tokens(c, k, prepared)
        cached = r.get("cached") if isinstance(r, dict) else None
        return f"{n:,} ({n - cached:,} computed)" if cached else f"{n:,}"

    def memory_cell(c, k):
        r = results[c, k]
        return (
            f"{r['peak_mib']:,.0f} (+{r['peak_mib'] - r['setup_mib']:,.0f})"
            if isinstance(r, dict)
            else _why(r)
        )

    def latency_cell(c, k):
        r = results[c, k]
        return f"{r['latency_s']:.2f} ({r['ratio']:.2f}x)" if isinstance(r, dict) else _why(r)

    return "\n\n".join(
        [
            table("Prompt tokens (with a prefix cache: positions computed per query)", token_cell),
            table(
                "Peak resident memory of the serving process, MiB (+ above its RSS before the first query)",
                memory_cell,
            ),
            table("Latency per query, s (x the same process's zero-shot latency)", latency_cell),
        ]
    )


def _why(reason: str) -> str:
    """A table cell for a run that has no measurement."""
    return "does not fit" if reason.startswith(DOES_NOT_FIT) else "failed"


def notes(prepared: dict, results: dict, shots: list[int], args) -> list[str]:
    """Caption lines: how the bank was stored, where icl stops fitting, KV sizes at 7B scale, answer checks."""
    bank = (
        "aim_icl.bank.DemoBank (SQLite, float16 states; read per query)" if DemoBank else "in-memory states"
    )
    first_over = next((k for k, n in sorted(prepared["icl_tokens"].items()) if n > args.max_tokens), None)
    misfits = [k for k in shots if isinstance(results.get(("icl", k)), str)]
    lines = [f"bank: {bank}; built once in {prepared['bank_s']:.1f} s for {max(shots)} demos."]
    if first_over is not None:
        skipped = f"; icl not run at k = {', '.join(map(str, misfits))}" if misfits else ""
        lines.append(
            f"icl does not fit from k = {first_over}: its prompt passes the {args.max_tokens:,}-token budget "
            f"(default: llava-v1.6-mistral-7b's context){skipped}."
        )
    for k in (16, 32):
        if k in prepared["icl_tokens"]:
            kv = {c: tokens(c, k, prepared) * KV_BYTES_7B / 2**30 for c in ("icl", "aim")}
            lines.append(
                f"KV cache at Mistral-7B scale (fp16), k = {k}: icl {kv['icl']:.1f} GiB, aim {kv['aim']:.2f} GiB."
            )
    return lines + _prefix_notes(results, shots)


def _prefix_notes(results: dict, shots: list[int]) -> list[str]:
    """Prefix cache: same answers as without it, the cost of its first query, its latency next to the bank's."""
    runs = {k: results.get(("aim+bank+prefix", k)) for k in shots}
    runs = {k: r for k, r in runs.items() if isinstance(r, dict)}
    same = [k for k, r in runs.items() if r["answers"] == r["bank_answers"]]
    lines = [
        f"greedy answers with the prefix cache equal those of the bank alone (same process) at k = "
        f"{', '.join(map(str, same)) or 'none'} of {', '.join(map(str, runs))}."
    ]
    lines += [
        f"k = {k}: with the prefix cache / the bank alone, same process: {r['vs_bank']:.2f}x latency, "
        f"{r['vs_bank_cpu']:.2f}x CPU time."
        for k, r in runs.items()
    ]
    firsts = [
        f"{results['aim+bank+prefix', k]['first_s']:.2f}"
        for k in shots
        if isinstance(results.get(("aim+bank+prefix", k)), dict)
    ]
    lines.append(f"first query with the prefix cache (builds it), s: {', '.join(firsts)}.")
    for k in (0, 16):
        r = {c: results.get((c, k)) for c in ("aim+bank", "aim+bank+prefix")}
        if all(isinstance(v, dict) for v in r.values()):
            lines.append(
                f"k = {k}: latency / zero-shot {r['aim+bank']['ratio']:.2f}x with the bank alone, "
                f"{r['aim+bank+prefix']['ratio']:.2f}x with the prefix cache ({r['aim+bank+prefix']['cached']} "
                "positions cached)."
            )
    return lines


def targets(prepared: dict, results: dict, shots: list[int]) -> list[str]:
    """The issue's targets, each with the measured value and whether it holds."""
    out = []
    if 16 in shots:
        zero = tokens("aim", 0, prepared)
        demo_share = (tokens("aim", 16, prepared) - zero) / (tokens("icl", 16, prepared) - zero)
        whole = tokens("aim", 16, prepared) / tokens("icl", 16, prepared)
        out.append(_target("k=16 demo tokens, aim / icl", demo_share, 0.02, "{:.2%}"))
        out.append(_target("k=16 whole prompt, aim / icl", whole, 0.08, "{:.2%}"))
        r = results.get(("aim+bank+prefix", 16))
        if isinstance(r, dict):
            out.append(_target("k=16 bank+prefix latency / zero-shot", r["ratio"], 1.3, "{:.2f}x"))
            out.append(_target("k=16 bank+prefix latency / bank alone", r["vs_bank"], 1.0, "{:.2f}x"))
            out.append(_target("k=16 bank+prefix CPU time / bank alone", r["vs_bank_cpu"], 1.0, "{:.2f}x"))
    lo, hi = min(shots), max(shots)
    for config in ("aim+bank", "aim+bank+prefix"):
        a, b = results.get((config, lo)), results.get((config, hi))
        if isinstance(a, dict) and isinstance(b, dict):
            growth = b["peak_mib"] / a["peak_mib"] - 1
            out.append(_target(f"{config} peak memory growth k={lo}->{hi}", growth, 0.10, "{:+.1%}"))
    return out


def _target(name: str, value: float, limit: float, fmt: str) -> str:
    return f"- {name}: {fmt.format(value)} (target <= {fmt.format(limit)}): {'holds' if value <= limit else 'MISSED'}"


def plot(prepared: dict, results: dict, shots: list[int], configs: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("prompt tokens", lambda c, k: tokens(c, k, prepared), "log"),
        ("peak memory (MiB)", lambda c, k: results[c, k]["peak_mib"], "linear"),
        ("latency per query / zero-shot", lambda c, k: results[c, k]["ratio"], "log"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (label, value, scale) in zip(axes, panels):
        for config in configs:
            ks = [k for k in shots if isinstance(results[config, k], dict) or label == "prompt tokens"]
            ax.plot([shots.index(k) for k in ks], [value(config, k) for k in ks], marker="o", label=config)
            ax.set_xticks(range(len(shots)), [str(k) for k in shots])
        ax.set(xlabel="shots k", ylabel=label, yscale=scale)
        ax.grid(alpha=0.3)
    axes[0].axhline(CONTEXT, color="grey", linestyle="--", linewidth=1, label="7B context (32,768)")
    axes[2].axhline(1.3, color="grey", linestyle="--", linewidth=1, label="target at k = 16 (1.3x)")
    axes[2].legend()
    axes[0].legend()
    fig.suptitle(
        "LLaVA-Next geometry (672x672 images, 2,928 tokens each), tiny width; icl stops where it does not fit"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16, 32])
    parser.add_argument(
        "--queries", type=int, default=5, help="timed queries per configuration (after a warm-up)"
    )
    parser.add_argument("--heavy-queries", type=int, default=3, help="timed queries for icl and fresh aim")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument(
        "--width", type=int, default=TINY_WIDTH, help="LM hidden size (a multiple of 256 if > 64)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=CONTEXT, help="icl runs only up to this prompt length"
    )
    parser.add_argument("--memory-budget-gib", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("efficiency.png"))
    args = parser.parse_args()
    args.shots = sorted(set(args.shots))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        prepared, results = run_all(args, Path(tmp))
    failed = {
        key: r for key, r in results.items() if isinstance(r, str) and not r.startswith(DOES_NOT_FIT[0])
    }
    print(tables(prepared, results, args.shots, args.configs))
    print("\n" + "\n".join(notes(prepared, results, args.shots, args)))
    print("\nTargets:\n" + "\n".join(targets(prepared, results, args.shots)))
    for key, message in failed.items():
        print(f"{key}: {message}")
    plot(prepared, results, args.shots, args.configs, args.out)
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()
