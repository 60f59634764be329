"""Uploading a saved projector: one Hub commit holding its weights, its config and its model card.

The commit is built as `huggingface_hub` operations first (`upload_operations`), so everything up to the network
can be listed and checked (`aim-icl hub push --dry-run`); `push_projector` then creates the repo and commits.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from aim_icl.core.hub_files import is_repo_id, offline_mode
from aim_icl.core.projector_config import CONFIG_NAME, WEIGHTS_NAME, hub_model_id
from aim_icl.errors import AIMError
from aim_icl.hub.card import CARD_NAME, SavedProjector, read_saved, render_card

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd

DEFAULT_MESSAGE = "Upload AIM projector"


def upload_operations(
    directory: str | Path, repo_id: str, base_model: str | None = None, **card_kwargs
) -> list[CommitOperationAdd]:
    """The commit's files: `projector.safetensors`, `projector_config.json` (bound to a Hub id, not a local path)
    and `README.md`: the directory's own card when it has one (the author's edits win), else a fresh one.

    `card_kwargs` (`results`, `datasets`, `fingerprint`) go to `render_card` and need a fresh card."""
    from huggingface_hub import CommitOperationAdd

    if not is_repo_id(repo_id):
        raise AIMError(f"{repo_id!r} is not a Hub repo id: pass org/name")
    saved = read_saved(directory)
    card_file = saved.directory / CARD_NAME
    if card_file.is_file() and any(card_kwargs.values()):
        raise AIMError(
            f"{card_file} already exists and is uploaded as it is: rewrite it with `aim-icl hub card "
            f"{saved.directory}` and these options, or drop them"
        )
    card = card_file.read_text(encoding="utf-8") if card_file.is_file() else None
    if card is None:
        card = render_card(saved, repo_id=repo_id, base_model=base_model, **card_kwargs)
    return [
        CommitOperationAdd(WEIGHTS_NAME, saved.directory / WEIGHTS_NAME),
        CommitOperationAdd(CONFIG_NAME, hub_config(saved, base_model)),
        CommitOperationAdd(CARD_NAME, card.encode("utf-8")),
    ]


def hub_config(saved: SavedProjector, base_model: str | None = None) -> bytes:
    """The config as uploaded. A backbone recorded as a local path (a model trained from a directory) would make
    every user's Hub model a mismatch, so it becomes `base_model`, or empty (bound by type and widths only)."""
    config = asdict(saved.config)
    config["backbone"]["name_or_path"] = hub_model_id(config["backbone"]["name_or_path"]) or base_model or ""
    return (json.dumps(config, indent=2) + "\n").encode()


def push_projector(
    directory: str | Path,
    repo_id: str,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    base_model: str | None = None,
    **card_kwargs,
) -> str:
    """Create `repo_id` if needed and commit the projector in `directory` to it; returns the commit's URL.

    `token`: None takes it from the usual places (`HF_TOKEN`, `hf auth login`)."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf

    from aim_icl import __version__

    operations = upload_operations(directory, repo_id, base_model, **card_kwargs)  # every local check first
    check_push_target(repo_id)
    api = HfApi(token=token, library_name="aim-icl", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(
            repo_id, operations, commit_message=commit_message or DEFAULT_MESSAGE, revision=revision
        )
    except hf.LocalTokenNotFoundError:
        raise AIMError(
            f"pushing to {repo_id} needs a Hub token: log in (hf auth login) or set HF_TOKEN"
        ) from None
    except (hf.HfHubHTTPError, OSError) as err:
        reason = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise AIMError(f"pushing to {repo_id} failed: {reason}") from None
    return info.commit_url


def push_projector_to_hub(
    aim, repo_id: str, private: bool | None = None, commit_message: str | None = None, **push_kwargs
) -> str:
    """Upload `aim`'s projector to the Hub repo `repo_id` (created if missing) in one commit: its weights, its
    config and a model card naming the backbone with its fingerprint. Returns the commit's URL.

    `push_kwargs` go to `push_projector`: `revision`, `token` (default: `HF_TOKEN` or `hf auth login`),
    `base_model`, and for the card `results` (`aim-icl eval` rows) and `datasets`.
    """
    import tempfile

    from aim_icl.bank.fingerprint import backbone_fingerprint  # torch: only when a loaded model is pushed

    check_push_target(repo_id)  # before the fingerprint reads the weights
    push_kwargs.setdefault("fingerprint", backbone_fingerprint(aim))
    with tempfile.TemporaryDirectory() as directory:
        aim.save_projector(directory)
        return push_projector(directory, repo_id, private, commit_message, **push_kwargs)


def check_push_target(repo_id: str) -> None:
    """Refuse what would make an upload fail, before any work (e.g. before `aim-icl train --push-to-hub`)."""
    if not is_repo_id(repo_id):
        raise AIMError(f"{repo_id!r} is not a Hub repo id: pass org/name")
    if offline_mode():
        raise AIMError(
            f"cannot push to {repo_id}: Hub offline mode is on (HF_HUB_OFFLINE); unset it to upload"
        )


def describe_operations(operations: list[CommitOperationAdd]) -> list[str]:
    """One line per file of the commit: its path in the repo and its size."""
    return [f"{op.path_in_repo}  {op.upload_info.size:,} bytes" for op in operations]
