"""HTTP server: OpenAI-compatible chat completions with AIM fused demos, named tasks, health and metrics.

Routes (`routes.py`), request/response schemas (`schemas.py`) and the model service with no HTTP in it
(`service.py`) are separate; `app.py` puts them together behind one model worker and a bounded queue.
"""
