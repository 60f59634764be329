"""One module per CLI verb, each with `add_arguments(parser)` and `run(args) -> int`.

A verb module imports at module level only what declaring its arguments needs (no torch, transformers or optional
extra: `aim-icl --help` imports every verb module), and the rest inside `run`. `EXTRA = "name"` names the optional
extra the verb runs on; the CLI checks it is installed before `run` and otherwise prints one line naming it.
"""
