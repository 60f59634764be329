"""Projectors on the Hugging Face Hub: loading by repo id (`resolve`), model cards (`card`) and uploads (`push`).

Free of torch: `aim-icl hub card` and `aim-icl hub push` read a saved projector's files without loading it.
"""
