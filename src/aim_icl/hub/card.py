"""The model card of a saved projector: `README.md` with the Hub's YAML metadata, as adapters are shared.

Everything on it comes from files (no torch): the projector's config and the header of its weights, the training
record that `aim-icl train` leaves beside them (`train_config.yaml` + `summary.json`; the shipped world projector
keeps the same record in `fingerprint.json`), and optionally the rows of an `aim-icl eval` `results.json` and a
backbone fingerprint (`aim_icl.bank.fingerprint.backbone_fingerprint`) when the backbone is loaded anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aim_icl.core.projector_config import WEIGHTS_NAME, ProjectorConfig, hub_model_id, load_projector_config
from aim_icl.errors import AIMError

CARD_NAME = "README.md"
TAGS = ["aim-icl", "aim-projector", "multimodal", "in-context-learning", "image-text-to-text"]
# the `aim-icl eval` row fields the table shows (eval/aggregate.py documents them)
RESULT_FIELDS = ("task", "mode", "shots", "metric", "value", "std", "trials")
# (label, dotted key into the training config): what a reader needs to judge or rerun the training; local paths
# (data, model, output) are left out: they mean nothing on the Hub and would show the author's disk layout
TRAINING_ROWS = (
    ("projector kind", "projector_name"),
    ("projector options", "projector_options"),
    ("optimizer steps", "optim.max_steps"),
    ("batch size", "optim.batch_size"),
    ("gradient accumulation", "optim.grad_accum"),
    ("learning rate (AdamW, cosine)", "optim.lr"),
    ("warmup steps", "optim.warmup_steps"),
    ("final lr ratio", "optim.min_lr_ratio"),
    ("weight decay", "optim.weight_decay"),
    ("identity loss weight", "optim.identity_weight"),
    ("corpus format", "data.format"),
    ("demos per sample", "data.min_shots..data.max_shots"),
    ("target pair / demos", "data.targets/data.demos"),
    ("max text tokens per pair", "data.max_text_tokens"),
    ("copy map fitted on demos", "fit_demos"),
    ("seed", "seed"),
    ("aim-icl version", "aim_icl_version"),
)
SUMMARY_ROWS = (("steps trained", "steps"), ("samples seen", "samples"), ("documents", "documents"))
FINGERPRINT_ROWS = (
    ("config hash", "config_hash"),
    ("weights hash (sampled)", "weights_hash"),
    ("dtype", "dtype"),
)


@dataclass
class SavedProjector:
    """A projector directory as files: its config, the size of its weights, and its training record if any."""

    directory: Path
    config: ProjectorConfig
    parameters: int  # values in the weight file (buffers such as `fitted` excluded)
    size_bytes: int
    training: dict | None  # the `aim-icl train` config (nested data:/optim:)
    summary: dict | None  # its `summary.json`


def read_saved(directory: str | Path) -> SavedProjector:
    directory = Path(directory)
    config = load_projector_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise AIMError(f"no {WEIGHTS_NAME} in {directory}: the projector save is incomplete")
    training, summary = _training_record(directory)
    return SavedProjector(
        directory, config, _count_values(weights), weights.stat().st_size, training, summary
    )


def render_card(
    saved: SavedProjector,
    repo_id: str | None = None,
    results: Sequence[dict] | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    fingerprint: dict | None = None,
) -> str:
    """The card's text. `base_model` / `datasets` default to what the files name as Hub ids (local paths are not
    Hub metadata); `results`: `aim-icl eval` rows; `fingerprint`: a `backbone_fingerprint` of the backbone."""
    from huggingface_hub import ModelCardData

    backbone = saved.config.backbone
    base_model = (
        base_model or hub_model_id(backbone.name_or_path) or hub_model_id((saved.training or {}).get("model"))
    )
    datasets = list(datasets) or _hub_datasets(saved.training)
    metadata = ModelCardData(
        library_name="aim-icl", base_model=base_model, tags=TAGS, datasets=datasets or None
    )
    # no `license:` value: the author picks it (the comment keeps the field in view)
    front = f"---\n{metadata.to_yaml()}\n# license: set one before publishing\n---\n"
    sections = [
        _intro(saved, base_model),
        _usage(base_model or backbone.name_or_path, repo_id),
        _backbone(saved, fingerprint),
        _projector(saved),
        _training(saved),
        _evaluation(results),
        "## License\n\nNot set: the author chooses one and adds `license:` to the metadata above.",
    ]
    return front + "\n" + "\n\n".join(sections) + "\n"


def write_card(saved: SavedProjector, out: str | Path | None = None, **render_kwargs) -> Path:
    """Write the card to `out` (default: `README.md` in the projector's directory, where `hub push` takes it)."""
    path = Path(out) if out is not None else saved.directory / CARD_NAME
    if path.is_dir():
        path = path / CARD_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_card(saved, **render_kwargs), encoding="utf-8")
    return path


def read_results(path: str | Path) -> list[dict]:
    """The rows of an `aim-icl eval` results.json, checked for the fields the card shows."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AIMError(f"cannot read results {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and set(RESULT_FIELDS) <= r.keys() for r in rows
    ):
        raise AIMError(
            f"{path} is not an aim-icl eval results.json (a list of rows with {', '.join(RESULT_FIELDS)})"
        )
    return rows


# -- sections ------------------------------------------------------------------------------------------------


def _intro(saved: SavedProjector, base_model: str | None) -> str:
    backbone = base_model or saved.config.backbone.describe()
    return (
        f"# AIM projector for {backbone}\n\n"
        "An aim-icl projector: the only trained part of AIM (Aggregating Image information "
        "of Multimodal demonstrations). It maps the frozen backbone's hidden states over each demonstration's text, "
        "which already fuse the demonstration's image, to fused virtual tokens, one per text token, so many-shot "
        "multimodal in-context learning keeps a single image (the query's) in the prompt. The backbone itself is "
        "not in this repo and stays frozen; aim-icl refuses to load the projector onto any other backbone."
    )


def _usage(model: str, repo_id: str | None) -> str:
    model = model or "path/to/the/backbone"
    return (
        "## Usage\n\n```python\n"
        "from aim_icl import AIM, Demo\n\n"
        f'aim = AIM.from_pretrained("{model}", projector="{repo_id or "<org>/<name>"}")\n'
        'demos = [Demo(image=image, text=f"Question: what is it? Answer: {name}") for image, name in examples]\n'
        'answer = aim.generate(query_image, "Question: what is it? Answer:", demos=demos, mode="aim")\n'
        "print(answer)\n```"
    )


def _backbone(saved: SavedProjector, fingerprint: dict | None) -> str:
    b = saved.config.backbone
    rows = [
        ("model type", b.model_type),
        ("name or path", b.name_or_path or "(any path: bound by type and widths only)"),
        ("hidden size read", b.hidden_size),
        ("embedding size written", b.embed_size),
    ]
    rows += [(label, (fingerprint or {}).get(key)) for label, key in FINGERPRINT_ROWS if fingerprint]
    return "## Backbone\n\n" + _table(rows)


def _projector(saved: SavedProjector) -> str:
    c = saved.config
    rows = [
        ("kind", c.name),
        ("options", json.dumps(c.options, sort_keys=True) if c.options else "defaults"),
        ("parameters", f"{saved.parameters:,}"),
        ("weights file", f"{WEIGHTS_NAME}, {saved.size_bytes / 1e6:.2f} MB (safetensors)"),
        ("hidden states read from layer", c.layer),
        ("format version", c.version),
    ]
    return "## Projector\n\n" + _table(rows)


def _training(saved: SavedProjector) -> str:
    if saved.training is None and saved.summary is None:
        return "## Training\n\nNo training record beside the projector (`train_config.yaml`, `summary.json`)."
    rows = [(label, _lookup(saved.training or {}, key)) for label, key in TRAINING_ROWS]
    rows += [(label, (saved.summary or {}).get(key)) for label, key in SUMMARY_ROWS]
    if saved.summary and "seconds" in saved.summary:
        rows.append(("training time", f"{saved.summary['seconds']:.0f} s"))
    return "## Training\n\n" + _table([(k, v) for k, v in rows if v not in (None, "")])


def _evaluation(results: Sequence[dict] | None) -> str:
    if not results:
        return "## Evaluation\n\nNo results given (`aim-icl hub card DIR --results results.json` adds them)."
    from aim_icl.eval.report import markdown_table  # the table `aim-icl eval` writes to results.md

    intro = "The rows of a results.json written by `aim-icl eval` (or `aim-icl demo` on the embedded world):"
    return f"## Evaluation\n\n{intro}\n\n" + markdown_table(list(results))


# -- helpers -------------------------------------------------------------------------------------------------


def _training_record(directory: Path) -> tuple[dict | None, dict | None]:
    """(`aim-icl train` config, summary) from the files `train` writes, or the shipped projector's fingerprint."""
    import yaml  # a dependency of huggingface_hub, so present wherever transformers is

    config_file, summary_file = directory / "train_config.yaml", directory / "summary.json"
    if config_file.is_file() or summary_file.is_file():
        training = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
        return training, json.loads(summary_file.read_text()) if summary_file.is_file() else None
    fingerprint = directory / "fingerprint.json"
    if fingerprint.is_file():
        record = json.loads(fingerprint.read_text())
        return record.get("training"), record.get("summary")
    return None, None


def _count_values(weights: Path) -> int:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="numpy") as f:
            slices = [f.get_slice(name) for name in f.keys()]  # noqa: SIM118 (safe_open is no dict)  # header only: no tensor is read
            return sum(_numel(s.get_shape()) for s in slices if s.get_dtype() != "BOOL")
    except (SafetensorError, OSError) as err:
        raise AIMError(f"cannot read {weights}: {str(err).splitlines()[0]}; re-save the projector") from None


def _numel(shape: list[int]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def _lookup(record: dict, key: str) -> Any:
    """A dotted key; `a..b` joins two values as a range, `a/b` as a pair."""
    for joiner, shown in (("..", "–"), ("/", " / ")):
        if joiner in key:
            values = [_lookup(record, part) for part in key.split(joiner)]
            return None if None in values else shown.join(str(v) for v in values)
    value: Any = record
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


def _hub_datasets(training: dict | None) -> list[str]:
    """Datasets the training data names on the Hub (`hf://datasets/org/name/...` paths)."""
    paths = ((training or {}).get("data") or {}).get("paths") or []
    found = (re.match(r"hf://datasets/([^/@]+/[^/@]+)", str(p)) for p in paths)
    return list(dict.fromkeys(m.group(1) for m in found if m))


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {label} | {_cell(value)} |" for label, value in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")
