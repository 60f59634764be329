"""Projectors on the Hugging Face Hub: model cards (`card`) and uploads (`push`; from Python,
`push_projector_to_hub(aim, "org/name")`). Loading by repo id is core's (`core.hub_files`): `AIM.from_pretrained`.

Free of torch: `aim-icl hub card` and `aim-icl hub push` read a saved projector's files without loading it.
"""
