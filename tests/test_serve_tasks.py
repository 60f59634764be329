"""Named tasks that outlive the server: stored with `--bank` (definition and demo keys, in the bank file), loaded at
start, read and deleted one by one; without a bank they live in memory and `/v1/tasks` says so."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys

import httpx
import pytest
from conftest import free_port, tiny_aim, wait_healthy
from fastapi.testclient import TestClient

from aim_icl.serve.app import ServerConfig, create_app
from aim_icl.serve.service import ModelService
from aim_icl.testing.tiny import tiny_image

QUESTION = "what is it?"


def png_url(seed: int) -> str:
    buffer = io.BytesIO()
    tiny_image(seed).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


TASKS = [
    {"name": "fused", "mode": "aim", "demos": [{"image": png_url(1), "text": f"{QUESTION} red"}]},
    {"name": "shown", "mode": "icl", "demos": [{"image": png_url(2), "text": f"{QUESTION} blue cat"}]},
    {"name": "picked", "mode": "text", "strategy": "random", "k": 1, "template": "Q: {question} A:"},
    {"name": "none", "mode": "zero"},
]
PREDICT = {"image": png_url(99), "question": QUESTION, "max_tokens": 4}


def answers(client) -> dict[str, str]:
    replies = {t["name"]: client.post(f"/v1/tasks/{t['name']}/predict", json=PREDICT) for t in TASKS}
    assert all(r.status_code == 200 for r in replies.values()), {n: r.text for n, r in replies.items()}
    return {name: reply.json()["answer"] for name, reply in replies.items()}


def test_tasks_stored_in_the_bank_answer_the_same_after_a_restart(tmp_path):
    aim, bank = tiny_aim("llava"), tmp_path / "bank.sqlite"
    with TestClient(create_app(ModelService(aim, bank))) as client:
        for task in TASKS:
            assert client.post("/v1/tasks", json=task).status_code == 201, task
        keys = client.post("/v1/tasks", json={"name": "by-key", "mode": "text", "demo_keys": []})
        assert keys.status_code == 400 and "needs demos" in keys.json()["error"]["message"]
        fused_key = client.get("/v1/tasks/fused").json()["demo_keys"]
        by_key = {"name": "by-key", "mode": "text", "demo_keys": fused_key}
        assert client.post("/v1/tasks", json=by_key).status_code == 201
        before = answers(client)
        listed = client.get("/v1/tasks").json()
    assert listed["persistent"] and listed["storage"] == "bank.sqlite"
    with TestClient(create_app(ModelService(aim, bank))) as client:  # a new server on the same bank
        assert client.get("/v1/tasks").json() == listed
        assert answers(client) == before
        assert client.get("/v1/tasks/by-key").json()["demo_keys"] == fused_key
        assert client.delete("/v1/tasks/by-key").status_code == 200
        assert client.delete("/v1/tasks/by-key").status_code == 404
    with TestClient(create_app(ModelService(aim, bank))) as client:
        assert [t["name"] for t in client.get("/v1/tasks").json()["data"]] == sorted(t["name"] for t in TASKS)


def test_without_a_bank_tasks_live_in_memory_and_the_list_says_so():
    with TestClient(create_app(ModelService(tiny_aim("llava"), config=ServerConfig(max_tasks=1)))) as client:
        assert client.post("/v1/tasks", json=TASKS[0]).status_code == 201
        listed = client.get("/v1/tasks").json()
        assert not listed["persistent"] and listed["storage"].startswith("memory")
        assert client.get("/v1/tasks/fused").json()["prefix_cache"]
        assert client.get("/v1/tasks/nope").status_code == 404
        assert client.post("/v1/tasks", json=TASKS[1]).status_code == 429  # the service's own config
        assert client.delete("/v1/tasks/fused").status_code == 200
        assert client.post("/v1/tasks", json=TASKS[1]).status_code == 201


def test_a_task_survives_a_killed_server(saved_llava, tmp_path):
    bank = tmp_path / "bank.sqlite"
    arguments = [
        "--model",
        str(saved_llava.model),
        "--projector",
        str(saved_llava.projector),
        "--bank",
        str(bank),
    ]
    process, url = start(arguments)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.post("/v1/tasks", json=TASKS[0]).status_code == 201
            before = http.post("/v1/tasks/fused/predict", json=PREDICT).json()["answer"]
    finally:
        os.kill(process.pid, signal.SIGKILL)  # no shutdown, no closing of the bank
        process.wait(30)
    process, url = start(arguments)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            assert [t["name"] for t in http.get("/v1/tasks").json()["data"]] == ["fused"]
            assert http.post("/v1/tasks/fused/predict", json=PREDICT).json()["answer"] == before
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "serving 'aim' on http://127.0.0.1:" in output and "stopped serving 'aim'" in output


def start(arguments: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "aim_icl.cli", "serve", "--port", str(port), *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, seconds=600)  # a loaded 2-core machine starts a server slowly
    except BaseException:
        process.kill()
        raise
    return process, url


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "mode": "aim"}, "needs demos"),
        ({"name": "x", "mode": "text", "demos": []}, "needs demos"),
        ({"name": "x", "mode": "zero", "demos": [{"text": "a"}]}, "takes no demos"),
        ({"name": "x", "strategy": "random"}, "needs k"),
    ],
)
def test_a_task_needs_demos_or_a_strategy_to_pick_them(body, message):
    with TestClient(create_app(ModelService(tiny_aim("llava")))) as client:
        refused = client.post("/v1/tasks", json=body)
    assert refused.status_code == 400 and message in refused.json()["error"]["message"]
