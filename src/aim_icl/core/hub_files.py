"""Telling a Hub repo id from a local directory, and fetching one file of a repo through `huggingface_hub`.

Files come through `huggingface_hub` itself: its cache layout, offline mode, and tokens from the usual places
(`HF_TOKEN`, `hf auth login`) unless a `token` is given. Offline mode and the cache folder are also read from the
environment at call time: `huggingface_hub` reads them once, at import, and a program (or a test) may set them later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from aim_icl.errors import AIMError

REVISION_MARK = "@"  # `org/name@revision`, as huggingface_hub's HfFileSystem spells a pinned repo


@dataclass(frozen=True)
class HubSource:
    """A Hub repo, the revision to read (None: the default branch), how errors name it, and how to reach it:
    `token`, `cache_dir` and `local_files_only` mean what they mean to transformers' `from_pretrained`."""

    repo_id: str
    revision: str | None = None
    label: str = ""
    token: str | bool | None = field(default=None, repr=False)
    cache_dir: str | Path | None = None
    local_files_only: bool = False

    def at(self, revision: str) -> HubSource:
        """The same source pinned to `revision` (the commit a first file came from), named as before."""
        return replace(self, revision=revision)

    def __str__(self) -> str:
        return self.label


def is_repo_id(text: str) -> bool:
    """Whether `text` is spelled like a Hub model repo id `org/name` (a bare name is taken for a local path)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if text.count("/") != 1:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def hub_source(
    source: str | Path | HubSource,
    revision: str | None = None,
    *,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> HubSource | None:
    """The Hub repo that `source` names (`org/name`, `org/name@revision`, or `revision=`), or None for a local
    path. An existing local path wins over a repo id of the same spelling. A `HubSource` is returned as it is."""
    if isinstance(source, HubSource):
        return source
    text = str(source)
    repo_id, mark, pinned = text.partition(REVISION_MARK)
    if Path(text).exists() or not is_repo_id(repo_id):
        if revision is not None:
            raise AIMError(
                f"projector_revision={revision!r} is for a Hub projector (org/name), and {text} is not one"
            )
        return None
    if mark and (not pinned or revision not in (None, pinned)):
        raise AIMError(f"give the revision of {repo_id} once: {text!r} with projector_revision={revision!r}")
    revision = pinned or revision
    label = f"Hub repo {repo_id}" + (f"@{revision}" if revision else "")
    return HubSource(repo_id, revision, label, token, cache_dir, local_files_only)


def cache_dir() -> str:
    """The Hub cache folder: `HF_HUB_CACHE` as the environment says now, else huggingface_hub's default."""
    from huggingface_hub import constants

    from_env = os.environ.get("HF_HUB_CACHE")
    return os.path.expanduser(from_env) if from_env else constants.HF_HUB_CACHE


def offline_mode() -> bool:
    from huggingface_hub import constants

    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    from_env = any(os.environ.get(n, "").upper() in constants.ENV_VARS_TRUE_VALUES for n in names)
    return constants.HF_HUB_OFFLINE or from_env


def fetch_file(source: HubSource, filename: str) -> Path:
    """One file of `source`, from the Hub cache or downloaded into it; every failure is one AIMError line."""
    from huggingface_hub import errors as hf
    from huggingface_hub import hf_hub_download

    from aim_icl import __version__

    cache = str(source.cache_dir) if source.cache_dir is not None else cache_dir()
    offline = offline_mode()
    what = f"{filename} of {source.label}"
    try:
        path = hf_hub_download(
            source.repo_id,
            filename,
            revision=source.revision,
            cache_dir=cache,
            token=source.token,
            local_files_only=offline or source.local_files_only,  # offline: never a request
            library_name="aim-icl",
            library_version=__version__,
        )
    except hf.LocalEntryNotFoundError:
        reason = (
            "offline mode is on (HF_HUB_OFFLINE)"
            if offline
            else "local_files_only is set"
            if source.local_files_only
            else "the Hub cannot be reached"
        )
        raise AIMError(
            f"{what} is not in the Hub cache {cache} and {reason}; {_cached_hint(source, cache)}"
        ) from None
    except hf.GatedRepoError:
        raise AIMError(
            f"{source.label} is gated: accept its terms on the Hub, then log in (hf auth login)"
        ) from None
    except hf.RepositoryNotFoundError:
        raise AIMError(
            f"no {source.label} on the Hub and no local directory {source.repo_id}; "
            "if the repo is private, log in (hf auth login or HF_TOKEN)"
        ) from None
    except hf.RevisionNotFoundError:
        raise AIMError(
            f"{source.repo_id} has no revision {source.revision!r}: pass a branch, tag or commit of it"
        ) from None
    except hf.RemoteEntryNotFoundError:
        raise AIMError(f"{source.label} holds no {filename}: it is not an aim-icl projector repo") from None
    except (hf.HfHubHTTPError, OSError) as err:
        reason = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise AIMError(f"cannot fetch {what}: {reason}") from None
    return Path(path)


def _cached_hint(source: HubSource, cache: str) -> str:
    """What the user can do: the revisions of this repo the cache does hold, or how to fill it."""
    from huggingface_hub.file_download import repo_folder_name

    refs = Path(cache) / repo_folder_name(repo_id=source.repo_id, repo_type="model") / "refs"
    cached = sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file())
    download = f"hf download {source.repo_id}" + (f" --revision {source.revision}" if source.revision else "")
    if cached:
        return f"cached revisions: {', '.join(cached)}; or download it once online ({download})"
    return f"download it once online ({download})"
