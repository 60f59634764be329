"""aim-icl: many-shot multimodal in-context learning with AIM fused virtual tokens.

The public names load on first use (PEP 562), so `import aim_icl` and the CLI's `--help` stay free of torch and
transformers; `from aim_icl import AIM` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "AIM": "aim_icl.core.aim",
    "MODES": "aim_icl.core.modes",
    "AIMError": "aim_icl.errors",
    "Demo": "aim_icl.core.demo",
    "DemoBank": "aim_icl.bank",
    "DemoStates": "aim_icl.core.demo",
    "PrefixCache": "aim_icl.core.prefix_cache",
    "PromptTemplate": "aim_icl.core.prompt",
    "Query": "aim_icl.core.demo",
    "load_image": "aim_icl.core.demo",
}
__all__ = [
    "AIM",
    "MODES",
    "AIMError",
    "Demo",
    "DemoBank",
    "DemoStates",
    "PrefixCache",
    "PromptTemplate",
    "Query",
    "load_image",
    "__version__",
]

if TYPE_CHECKING:
    from aim_icl.bank import DemoBank
    from aim_icl.core.aim import AIM
    from aim_icl.core.demo import Demo, DemoStates, Query, load_image
    from aim_icl.core.modes import MODES
    from aim_icl.core.prefix_cache import PrefixCache
    from aim_icl.core.prompt import PromptTemplate
    from aim_icl.errors import AIMError


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aim_icl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
