"""The four prompt modes, in a module with no heavy imports (the CLI declares its choices from it)."""

MODES = ("zero", "text", "icl", "aim")  # no demos; demo texts only; demo images in the prompt; fused tokens
