"""`aim-icl world export --lmms-eval DIR`: the world tasks' data and lmms-eval YAMLs, loadable offline through
`lmms-eval --include_path DIR`.

The YAMLs ship in this package (`tasks/`) with a placeholder for their data's location; the export draws each
task's documents from a seed, saves them under `DIR/data/<task>` (`datasets.DatasetDict.save_to_disk`, read back
with `load_from_disk`), and writes the YAMLs to `DIR` with that absolute path filled in. No network.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from aim_icl.errors import AIMError

PLACEHOLDER = "__AIM_ICL_DATA__"
TASKS = ("fast_binding", "fast_binding_4way", "fast_binding_16way", "caption_style", "vqa")
PREFIX = "aim_world_"


def export(
    out: Path, seed: int = 0, items: int = 200, tasks=TASKS, max_shots: int | None = None
) -> list[str]:
    """Write the tasks' data and YAMLs to `out`; returns the lmms-eval task names written."""
    from aim_icl.integrations.lmms_eval.world_data import vqa_dataset, world_dataset

    unknown = [t for t in tasks if t not in TASKS]
    if unknown or items < 1 or (max_shots is not None and max_shots < 1):
        raise AIMError(f"export takes tasks among {', '.join(TASKS)}, items >= 1 and max shots >= 1")
    out = Path(out).resolve()
    templates = sorted((resources.files(__package__) / "tasks").iterdir(), key=lambda t: t.name)
    for template in templates:
        if template.name.startswith("_"):  # shared parts the task YAMLs include
            (out / template.name).parent.mkdir(parents=True, exist_ok=True)
            (out / template.name).write_text(template.read_text())
    names = []
    for task in tasks:
        data = out / "data" / task
        if data.exists():
            shutil.rmtree(data)
        dataset = vqa_dataset(seed, items) if task == "vqa" else world_dataset(task, seed, items, max_shots)
        dataset.save_to_disk(str(data))
        for template in templates:
            if template.name in (f"{PREFIX}{task}.yaml", f"{PREFIX}{task}_mc.yaml"):
                quoted = json.dumps(str(data.parent))[1:-1]  # the path inside the YAML's double quotes
                (out / template.name).write_text(template.read_text().replace(PLACEHOLDER, quoted))
                names.append(template.name.removesuffix(".yaml"))
    return names
