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


def load_processor(model_id_or_dir: str | Path):
    """`AutoProcessor`, falling back to an image-only processor where the video processor cannot load."""
    import transformers
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model_id_or_dir)
    except (OSError, ImportError, ValueError) as err:
        config = Path(model_id_or_dir) / "processor_config.json"
        if "video" not in str(err).lower() or not config.is_file():
            raise AIMError(
                f"cannot load the processor of {model_id_or_dir}: {str(err).splitlines()[0]}"
            ) from None
        name = json.loads(config.read_text()).get("processor_class", "")
        cls = getattr(transformers, name, None)
        if cls is None:
            raise AIMError(f"unknown processor class {name!r} in {config}") from None
        return image_only_processor(cls).from_pretrained(model_id_or_dir)


def load_model(model_id_or_dir: str | Path, **hf_kwargs):
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(model_id_or_dir, **hf_kwargs)
    except (OSError, ValueError) as err:
        raise AIMError(f"cannot load model {model_id_or_dir}: {str(err).splitlines()[0]}") from None
