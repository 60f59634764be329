"""Loading a model and its processor by name or directory, on machines without torchvision too."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import ProcessorMixin

from aim_icl.errors import AIMError


def image_only_processor(cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """`cls` without its video processor (which needs torchvision); same name, same behaviour on images and text.

    Transformers derives a processor's parts from its `__init__` signature, so a subclass whose `__init__` takes no
    video processor loads and saves without one.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        cls.__init__(self, image_processor, tokenizer, None, **kwargs)

    attrs = {"__init__": __init__, "__module__": cls.__module__, "__doc__": cls.__doc__}
    if "apply_chat_template" in vars(cls):  # SmolVLM's override reads the video processor's defaults
        attrs["apply_chat_template"] = ProcessorMixin.apply_chat_template
    return type(cls.__name__, (cls,), attrs)


# what reaches a model's files and its processor's alike (transformers' `from_pretrained` options)
HUB_OPTIONS = ("revision", "token", "cache_dir", "trust_remote_code", "local_files_only", "subfolder")


def load_processor(model_id_or_dir: str | Path, **hub_options):
    """`AutoProcessor`, falling back to an image-only processor where the video processor cannot load.

    `hub_options` (`HUB_OPTIONS`) go to `from_pretrained` as they do for the model, so weights and processor come
    from one revision of one repo, with one token."""
    import transformers
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model_id_or_dir, **hub_options)
    except (OSError, ImportError, ValueError) as err:
        if "video" not in str(err).lower():
            raise AIMError(f"cannot load the processor of {model_id_or_dir}: {_first_line(err)}") from err
        config = _processor_config(model_id_or_dir, hub_options)
        name = json.loads(config.read_text()).get("processor_class", "") if config else ""
        cls = getattr(transformers, name, None)
        if cls is None:
            raise AIMError(f"cannot load the processor of {model_id_or_dir}: {_first_line(err)}") from err
        return image_only_processor(cls).from_pretrained(model_id_or_dir, **hub_options)


def _processor_config(model_id_or_dir: str | Path, hub_options: dict) -> Path | None:
    """The processor's `processor_config.json` (local, or from the Hub cache at the same revision), if any."""
    from transformers.utils import cached_file

    options = {k: v for k, v in hub_options.items() if k != "trust_remote_code"}
    try:
        path = cached_file(
            model_id_or_dir,
            "processor_config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **options,
        )
    except OSError:
        return None
    return None if path is None else Path(path)


def load_model(model_id_or_dir: str | Path, **hf_kwargs):
    """`AutoModelForImageTextToText.from_pretrained`; a failure is one AIMError line, its cause kept."""
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(model_id_or_dir, **hf_kwargs)
    except (OSError, ValueError) as err:
        raise AIMError(f"cannot load model {model_id_or_dir}: {_first_line(err)}") from err


def _first_line(err: Exception) -> str:
    return next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
