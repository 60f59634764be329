"""HTTP server: OpenAI-compatible chat completions with AIM fused demos, named tasks, health and metrics.

Routes (`routes.py`, `streaming.py`), request/response schemas (`schemas.py`) and the model service with no HTTP in
it (`service.py`, with `chat.py`, `tasks.py`, `sampling.py`, `choices.py`) are separate; `app.py` puts them together
behind one batching model worker (`worker.py`) and a bounded queue.
"""
