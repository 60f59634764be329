"""aim-icl: many-shot multimodal in-context learning with AIM fused virtual tokens."""

from aim_icl.bank import DemoBank
from aim_icl.core.aim import AIM, MODES
from aim_icl.core.demo import Demo, DemoStates, load_image
from aim_icl.core.prompt import PromptTemplate
from aim_icl.errors import AIMError

__version__ = "0.1.0"
__all__ = [
    "AIM",
    "MODES",
    "AIMError",
    "Demo",
    "DemoBank",
    "DemoStates",
    "PromptTemplate",
    "load_image",
    "__version__",
]
