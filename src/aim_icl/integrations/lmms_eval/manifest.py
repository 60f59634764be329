"""The `lmms_eval.models` entry point: lmms-eval loads `MANIFEST` when it builds its model registry.

This module imports lmms-eval's registry type only, so listing lmms-eval's models never loads torch through it.
`--model aim_icl` resolves to the chat class (lmms-eval 0.7's default); `--force_simple` gives the simple class,
which also takes `loglikelihood` requests (lmms-eval builds multiple-choice tasks only for simple models).
"""

from __future__ import annotations

from lmms_eval.models.registry_v2 import ModelManifest

_MODEL = "aim_icl.integrations.lmms_eval.model"

MANIFEST = ModelManifest(
    model_id="aim_icl",
    simple_class_path=f"{_MODEL}.AIMSimple",
    chat_class_path=f"{_MODEL}.AIMChat",
)
