"""Loading as transformers does, offline: a Hub cache holding a tiny model at two revisions whose processors differ,
and a projector beside it. `revision`, `token`, `cache_dir`, ... reach the model and its processor alike."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers

from aim_icl import AIM, AIMError
from aim_icl.core.projector_config import CONFIG_NAME, WEIGHTS_NAME
from aim_icl.testing.tiny import build_tiny

REPO, PROJECTOR_REPO = "org/tiny-llava", "org/tiny-llava-aim"
FIRST, SECOND = "1" * 40, "2" * 40  # commits: main points at the first, tag v2 at the second
CONTEXT = {FIRST: 111, SECOND: 222}  # each revision's tokenizer says its own model_max_length


def cache_snapshot(cache: Path, repo_id: str, files: Path, commit: str, refs: tuple[str, ...]) -> None:
    """`files` as the snapshot `commit` of `repo_id` in a Hub cache laid out as huggingface_hub writes it:
    `snapshots/<commit>/...` and `refs/<branch or tag>` holding the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(files, repo / "snapshots" / commit)
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> tuple[Path, dict[str, AIM]]:
    """The cache, and an AIM over each revision's model and processor as they were saved."""
    root = tmp_path_factory.mktemp("hub")
    cache, saved = root / "cache", {}
    for seed, (commit, refs) in enumerate(((FIRST, ("main",)), (SECOND, ("v2",)))):
        model, processor = build_tiny("llava", seed=seed)
        processor.tokenizer.model_max_length = CONTEXT[commit]
        model.save_pretrained(root / commit)
        processor.save_pretrained(root / commit)
        cache_snapshot(cache, REPO, root / commit, commit, refs)
        saved[commit] = AIM(model, processor)
    with torch.no_grad():  # weights no fresh projector has
        for p in saved[FIRST].projector.parameters():
            p.normal_(generator=torch.Generator().manual_seed(5))
    saved[FIRST].save_projector(root / "projector")
    cache_snapshot(cache, PROJECTOR_REPO, root / "projector", FIRST, ("main",))
    return cache, saved


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No request may leave: offline mode on, and the Hub's download functions a test failure."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("a request to the Hub was made")

    for name in ("get_hf_file_metadata", "http_get"):
        monkeypatch.setattr(huggingface_hub.file_download, name, no_network)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("revision", "commit"), [(None, FIRST), ("main", FIRST), ("v2", SECOND), (SECOND, SECOND), (FIRST, FIRST)]
)
def test_a_revision_loads_its_own_weights_and_its_own_processor(hub, revision, commit):
    cache, saved = hub
    aim = AIM.from_pretrained(REPO, revision=revision, cache_dir=cache, local_files_only=True)
    assert same_weights(aim.model, saved[commit].model)
    other = SECOND if commit == FIRST else FIRST
    assert not same_weights(aim.model, saved[other].model)
    assert aim.encoder.tokenizer.model_max_length == CONTEXT[commit]  # the processor of the same revision


def test_hub_options_reach_the_model_and_the_processor_alike(hub, monkeypatch):
    cache, _ = hub
    calls = {}
    for auto in (transformers.AutoModelForImageTextToText, transformers.AutoProcessor):
        original = auto.from_pretrained.__func__

        def spy(cls, name, *args, _original=original, _name=auto.__name__, **kwargs):
            calls[_name] = kwargs
            return _original(cls, name, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    options = {"revision": "v2", "token": "hf_not_a_real_token", "cache_dir": cache, "local_files_only": True}
    AIM.from_pretrained(REPO, **options, subfolder="", dtype=torch.float32)
    model, processor = calls["AutoModelForImageTextToText"], calls["AutoProcessor"]
    for key in (*options, "trust_remote_code", "subfolder"):
        assert model[key] == processor[key], key
    assert (
        model["token"] == "hf_not_a_real_token" and model["cache_dir"] == cache and model["revision"] == "v2"
    )
    assert (
        model["dtype"] == torch.float32 and "dtype" not in processor
    )  # the model's own options stay its own


def test_the_projector_comes_from_the_same_cache_with_its_own_revision(hub, monkeypatch):
    cache, saved = hub
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)  # only cache_dir says where the cache is
    fetched = []
    download = huggingface_hub.hf_hub_download

    def recorded(repo_id, filename, **kwargs):
        fetched.append((repo_id, filename, kwargs))
        return download(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recorded)
    aim = AIM.from_pretrained(
        REPO, PROJECTOR_REPO, projector_revision="main", token="hf_x", cache_dir=cache, local_files_only=True
    )
    assert same_weights(aim.projector, saved[FIRST].projector)
    # the config first (checked against the backbone), then the weights from the commit the config came from
    assert [(repo, name, k["revision"]) for repo, name, k in fetched] == [
        (PROJECTOR_REPO, CONFIG_NAME, "main"),
        (PROJECTOR_REPO, WEIGHTS_NAME, FIRST),
    ]
    assert all(k["cache_dir"] == str(cache) and k["token"] == "hf_x" for _, _, k in fetched)
    with pytest.raises(AIMError, match="org/tiny-llava-aim has no revision|not in the Hub cache"):
        AIM.from_pretrained(
            REPO, PROJECTOR_REPO, projector_revision="v9", cache_dir=cache, local_files_only=True
        )


def test_a_model_that_cannot_load_keeps_the_cause(tmp_path):
    with pytest.raises(AIMError, match="cannot load model") as failure:
        AIM.from_pretrained(str(tmp_path / "no-such-model"), local_files_only=True)
    cause = failure.value.__cause__
    assert isinstance(cause, OSError) and str(cause) in str(failure.value)  # transformers' own error, kept


def test_a_projector_revision_without_a_projector_is_one_line(hub):
    cache, _ = hub
    with pytest.raises(AIMError, match="projector_revision='v1' is a Hub projector's"):
        AIM.from_pretrained(REPO, projector_revision="v1", cache_dir=cache)


def test_the_cli_loader_passes_the_hub_options_through(hub):
    from aim_icl.models import load_aim

    cache, saved = hub
    aim = load_aim(REPO, revision="v2", cache_dir=cache, local_files_only=True)
    assert same_weights(aim.model, saved[SECOND].model)
    assert aim.encoder.tokenizer.model_max_length == CONTEXT[SECOND]
