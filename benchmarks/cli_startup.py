"""How fast `aim-icl --help` and `aim-icl <verb> --help` start, next to bare Python and `import torch`.

Target (issue 12): under 1 s for every verb. Each command runs `--repeats` times in a fresh interpreter; the table
shows the median wall time and its ratio to `import torch` measured in the same run (the machine is shared, so
compare within one run).

    python benchmarks/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from aim_icl.cli import VERBS


def seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    python = [sys.executable, "-c"]
    rows = [("python (nothing imported)", seconds([*python, "pass"], repeats))]
    torch = seconds([*python, "import torch"], repeats)
    rows.append(("python: import torch", torch))
    for verb in ("", *VERBS):
        command = [sys.executable, "-m", "aim_icl.cli", *([verb] if verb else []), "--help"]
        rows.append((f"aim-icl {verb} --help".replace("  ", " "), seconds(command, repeats)))
    print(f"| command | median s ({repeats} runs) | / import torch |\n|---|---:|---:|")
    for name, value in rows:
        print(f"| {name} | {value:.2f} | {value / torch:.2f} |")


if __name__ == "__main__":
    main()
