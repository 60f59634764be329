"""Prompt tokens per mode and shot count at real LLaVA-Next (672x672) and Qwen2-VL (448x448) image geometry.

Usage: python benchmarks/prompt_tokens.py [--shots 0 4 16]
"""

from __future__ import annotations

import argparse

from aim_icl.testing.geometry import token_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 4, 16])
    print(token_table(parser.parse_args().shots))


if __name__ == "__main__":
    main()
