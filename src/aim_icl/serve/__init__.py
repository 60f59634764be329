"""HTTP server: OpenAI-compatible chat completions with AIM fused demos, named tasks, health and metrics.

Routes (`routes.py`; every answer through one stream of its job's events, `streaming.py`), request/response schemas
(`schemas.py`), settings and their flags (`config.py`) and the model service with no HTTP in it (`service.py`, with
`chat.py`, `tasks.py`) are separate; `app.py` puts them together behind the engine (`engine.py`): one model thread
that schedules generation per decoding step (`decoder.py` over the rows' KV slots, `kv.py`; per-row sampling and
text, `sampling.py`, `choices.py`) behind a bounded queue.
"""
