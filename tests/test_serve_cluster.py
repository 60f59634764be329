"""Serving on Ray Serve: replicas answer as the single process does, share one bank, survive SIGKILL, share tasks
through the bank file's task table.

The Ray tests start one local Ray cluster (127.0.0.1, 2 CPUs, no dashboard) for the module and tear it down.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest
from conftest import free_port, make_demos, tiny_aim
from fastapi.testclient import TestClient
from PIL import Image

from aim_icl import AIM, AIMError, Demo, DemoBank
from aim_icl.bank import BankStore, backbone_fingerprint, content_key
from aim_icl.bank.layered import claim_shard, merge_replica_shards, shard_path, shards_of
from aim_icl.cli import build_parser, main
from aim_icl.commands.serve import server_config
from aim_icl.serve import cluster
from aim_icl.serve.app import ServerConfig, create_app
from aim_icl.serve.metrics_mirror import MetricsMirror
from aim_icl.serve.service import ModelService
from aim_icl.testing.tiny import tiny_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")  # Ray's own pydantic usage

KEY = "cluster-key"
AUTH = {"authorization": f"Bearer {KEY}"}
QUESTION = "what is it?"
ANSWERS = ["red", "blue cat", "green bird", "small dog"]
SHARED = [(0, "red"), (1, "blue cat")]  # (image seed, answer) of the demos the shared bank starts with


# -- the layered bank, without Ray ------------------------------------------------------------------------------


def test_a_layered_bank_reads_the_shared_bank_and_writes_only_its_own_file(tmp_path):
    aim = tiny_aim("llava")
    demos = make_demos(4, seed=3)
    with DemoBank(tmp_path / "bank.sqlite", aim) as shared:
        shared_keys = shared.add(demos[:2], progress=False)
    with DemoBank(tmp_path / "own.sqlite", aim, over=tmp_path / "bank.sqlite") as layered:
        keys = layered.add(demos, progress=False)  # two already shared: only two are read and written
        assert keys[:2] == shared_keys and len(layered) == 4 and set(layered.keys()) == set(keys)
        assert layered.get(keys[0]).text == demos[0].text and layered.get(keys[3]).text == demos[3].text
        assert len(layered.select(None, 4, "random")) == 4
        assert [r.key for r in layered.store.rows()] == sorted(keys)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            layered.store.shared.conn.execute("DELETE FROM demos")
    with BankStore(tmp_path / "bank.sqlite") as bank, BankStore(tmp_path / "own.sqlite") as own:
        assert set(bank.keys()) == set(shared_keys) and set(own.keys()) == set(keys[2:])


def test_merging_replica_shards_takes_each_demo_once_and_leaves_live_shards_alone(tmp_path):
    aim = tiny_aim("llava")
    bank, demos = tmp_path / "bank.sqlite", make_demos(5, seed=4)
    for owner, part in (("a", demos[:3]), ("b", demos[2:])):  # demo 2 read by both replicas
        with DemoBank(shard_path(bank, owner), aim) as shard:
            shard.add(part, progress=False)
    live = claim_shard(shard_path(bank, "b"))
    assert merge_replica_shards(bank) == 3  # creates the bank from shard a; b is still written to
    assert shards_of(bank) == [shard_path(bank, "b")]
    live.close()  # its replica died: the kernel drops the lock
    assert merge_replica_shards(bank) == 2 and shards_of(bank) == []
    with BankStore(bank) as store:
        assert len(store) == 5 and set(store.keys()) == {
            content_key(d.image, d.text, aim.template) for d in demos
        }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.sqlite"]  # no shard, lock or WAL file left


def test_replica_bounds_become_serve_options():
    config = ServerConfig(queue_size=4, max_batch_size=2)
    fixed = cluster.deployment_options(cluster.Scaling(replicas=3, num_gpus=1), config)
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1}
    assert fixed["max_ongoing_requests"] == 6 and "autoscaling_config" not in fixed
    scaled = cluster.deployment_options(cluster.Scaling(replicas=2, min_replicas=1, max_replicas=4), config)
    assert scaled["autoscaling_config"] | {} == {
        "min_replicas": 1,
        "max_replicas": 4,
        "initial_replicas": 2,
        "target_ongoing_requests": 2.0,
    }
    assert "num_replicas" not in scaled
    with pytest.raises(AIMError, match="replica bounds"):
        cluster.Scaling(replicas=3, max_replicas=2)


def test_replica_flags_choose_ray_and_bad_ones_fail_in_one_line_before_any_model_loads(capsys, monkeypatch):
    parse = build_parser().parse_args
    assert not cluster.wanted(parse(["serve"]))  # the single process stays the default
    assert cluster.wanted(parse(["serve", "--replicas", "2"])) and cluster.wanted(
        parse(["serve", "--ray-address", "auto"])
    )
    args = parse(
        ["serve", "--replicas", "2", "--min-replicas", "1", "--max-replicas", "4", "--allow-dir", "."]
    )
    spec = cluster.replica_spec(args, server_config(args))
    assert spec.config.images.allowed_dirs[0].is_absolute()  # replicas run in another working directory
    assert cluster.scaling(args).bounds == (1, 4)
    for flags, message in [
        (["--replicas", "3", "--max-replicas", "2"], "replica bounds"),
        (["--replicas", "0"], "replica bounds"),
        (["--replicas", "2", "--num-gpus", "1"], "--device cuda"),
    ]:
        assert main(["serve", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [cluster] extra were not installed
    assert main(["serve", "--replicas", "2"]) == 2
    assert capsys.readouterr().err == (
        'aim-icl serve: error: needs the [cluster] extra (ray is not installed): pip install "aim-icl[cluster]"\n'
    )


def test_two_replicas_see_one_task_store(tmp_path):
    """Two services over one shared bank (as two replicas): a task one creates, the other lists and answers the
    same; one deletes it, the other no longer has it. No body is replayed: both read the bank's task table."""
    aim = tiny_aim("llava")
    bank = tmp_path / "bank.sqlite"
    BankStore(bank, backbone_fingerprint(aim)).close()  # as the first replica does
    config = ServerConfig(api_key=KEY, max_new_tokens=3)
    apps = [
        create_app(ModelService(aim, shard_path(bank, name), bank_over=bank, config=config)) for name in "ab"
    ]
    task = {"name": "t", "mode": "aim", "demos": [{"image": png_url(1), "text": f"{QUESTION} red"}]}
    question = {"image": png_url(99), "question": QUESTION}
    with TestClient(apps[0], headers=AUTH) as first, TestClient(apps[1], headers=AUTH) as second:
        assert first.post("/v1/tasks", json={**task, "template": "{x}"}).status_code == 400
        assert first.post("/v1/tasks", json=task).status_code == 201
        assert [t["name"] for t in second.get("/v1/tasks").json()["data"]] == ["t"]
        assert second.get("/v1/tasks").json()["persistent"]
        one, other = (c.post("/v1/tasks/t/predict", json=question) for c in (first, second))
        assert one.status_code == other.status_code == 200 and one.json()["answer"] == other.json()["answer"]
        assert second.post("/v1/tasks", json=task).status_code == 409  # the name is taken, on either replica
        assert second.delete("/v1/tasks/t").json() == {"object": "task.deleted", "name": "t", "deleted": True}
        assert first.get("/v1/tasks/t").status_code == 404
        assert first.post("/v1/tasks/t/predict", json=question).status_code == 404
        assert first.get("/v1/tasks").json()["data"] == []


def test_every_metric_sample_of_a_replica_is_mirrored_with_its_labels():
    metrics = ModelService(tiny_aim("llava")).metrics
    metrics.observe_request("/v1/chat/completions", 200, 0.3)
    metrics.observe_request("/v1/chat/completions", 503, 0.01)
    made = {}

    class Gauge:
        def __init__(self, name, description, tag_keys):
            self.tag_keys, self.values = tag_keys, {}
            made[name] = self

        def set(self, value, tags):
            assert set(tags) == set(self.tag_keys)
            self.values[tuple(sorted(tags.items()))] = value

    mirror = MetricsMirror(metrics.registry, Gauge)
    copied = mirror.copy()
    assert copied == sum(len(gauge.values) for gauge in made.values())  # every sample read lands in a gauge
    assert made["aim_requests_total"].values[(("route", "/v1/chat/completions"), ("status", "503"))] == 1
    buckets = made["aim_request_duration_seconds_bucket"].values
    assert buckets[(("le", "0.5"), ("route", "/v1/chat/completions"))] == 2
    assert buckets[(("le", "0.1"), ("route", "/v1/chat/completions"))] == 1
    assert not any(name.endswith("_created") for name in made)
    metrics.observe_request("/v1/chat/completions", 200, 0.3)
    mirror.copy()  # the same gauges, updated
    assert made["aim_requests_total"].values[(("route", "/v1/chat/completions"), ("status", "200"))] == 2


# -- a local Ray cluster ------------------------------------------------------------------------------------------


def png_url(seed: int) -> str:
    buffer = io.BytesIO()
    tiny_image(seed).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(demos: list[tuple[int, str]], query_seed: int = 99) -> list[dict]:
    """One example turn per (image seed, answer), then a question about another image."""
    messages = []
    for seed, answer in demos:
        image = {"type": "image_url", "image_url": {"url": png_url(seed)}}
        messages += [
            {"role": "user", "content": [image, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": answer},
        ]
    query = [
        {"type": "image_url", "image_url": {"url": png_url(query_seed)}},
        {"type": "text", "text": QUESTION},
    ]
    return [*messages, {"role": "user", "content": query}]


def demo_key(aim: AIM, seed: int, answer: str) -> str:
    """The bank key the server gives the chat demo (image as decoded from the PNG, text by the default template)."""
    image = Image.open(io.BytesIO(base64.b64decode(png_url(seed).partition(",")[2]))).convert("RGB")
    return content_key(image, f"{QUESTION} {answer}", aim.template)


@pytest.fixture(scope="module")
def model_dir(saved_llava, tmp_path_factory):
    """A directory with a shared bank that already holds two chat demos, and the session's saved tiny LLaVA."""
    directory = tmp_path_factory.mktemp("cluster")
    with DemoBank(directory / "bank.sqlite", saved_llava.aim) as bank:
        bank.add([Demo(tiny_image(s), f"{QUESTION} {a}") for s, a in SHARED], progress=False)
    return directory, saved_llava


@pytest.fixture(scope="module")
def served(model_dir):
    """Two replicas of the app on a local Ray cluster; yields (url, spec)."""
    ray, serve = cluster.import_ray()
    directory, saved = model_dir
    config = ServerConfig(api_key=KEY, queue_size=8, max_batch_size=4, max_new_tokens=4)
    spec = cluster.ReplicaSpec(
        model=str(saved.model),
        projector=str(saved.projector),
        device="cpu",
        name="aim",
        bank=str(directory / "bank.sqlite"),
        config=config,
    )
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            cluster.application(spec, cluster.Scaling(replicas=2)), name=cluster.APP_NAME, route_prefix="/"
        )
        yield f"http://127.0.0.1:{port}", spec
    finally:
        serve.shutdown()
        ray.shutdown()


def post_chat(url: str, messages: list[dict], timeout: float = 60) -> httpx.Response:
    body = {"messages": messages, "max_tokens": 3, "temperature": 0}
    return httpx.post(
        f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=timeout
    )


def concurrently(fn, args: list, workers: int = 4) -> list:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, args))


def bank_after_merge(directory, copy) -> BankStore:
    """What the bank holds once every shard, live ones included, is merged (into a copy: replicas still run)."""
    with sqlite3.connect(directory / "bank.sqlite") as source, sqlite3.connect(copy) as target:
        source.backup(
            target
        )  # the file and its WAL: replicas keep the bank open, so merged rows may be in the WAL
    store = BankStore(copy)
    for shard in shards_of(directory / "bank.sqlite"):
        with sqlite3.connect(shard) as conn:  # a replica killed mid-write leaves a whole file behind
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        store.merge(shard)
    keys = store.keys()
    assert all(store.get(key) is not None for key in keys)  # every row decodes (sizes checked)
    return store


def test_two_replicas_answer_as_the_single_process_server(served, model_dir):
    url, spec = served
    _, saved = model_dir
    aim = AIM.from_pretrained(saved.model, projector=saved.projector)
    single_app = create_app(ModelService(aim, model_name="aim"), spec.config)
    requests = [
        ("zero", chat([])),
        ("aim", chat(SHARED + [(2, "green bird")])),
        ("text", chat([(3, "small dog")])),
    ]
    with TestClient(single_app) as http:
        single = openai.OpenAI(base_url=f"{http.base_url}/v1", api_key=KEY, http_client=http)
        replicas = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
        for mode, messages in requests:
            kwargs = {"model": "aim", "messages": messages, "max_tokens": 4, "temperature": 0}
            one, many = (
                c.chat.completions.create(**kwargs, extra_body={"aim_mode": mode}) for c in (single, replicas)
            )
            assert many.choices[0].message.content == one.choices[0].message.content
            assert many.usage.model_dump() == one.usage.model_dump()
            assert many.model_extra["aim_mode"] == one.model_extra["aim_mode"] == mode
        for client in (single, replicas):
            with pytest.raises(openai.BadRequestError, match="aim_mode"):
                client.chat.completions.create(
                    model="aim", messages=chat([]), extra_body={"aim_mode": "nope"}
                )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong").chat.completions.create(
            model="aim", messages=chat([])
        )
    seen = {
        r.headers[cluster.REPLICA_HEADER] for r in concurrently(lambda _: post_chat(url, chat([])), range(8))
    }
    assert len(seen) == 2  # one route, two replicas behind it


def test_a_task_created_on_one_replica_answers_on_every_replica(served):
    url, _ = served
    headers = {"authorization": f"Bearer {KEY}"}
    demos = [{"image": png_url(s), "text": f"{QUESTION} {a}"} for s, a in SHARED]
    task = {"name": "colours", "mode": "aim", "demos": demos, "template": "{question}"}
    assert httpx.post(f"{url}/v1/tasks", json=task, headers=headers, timeout=60).status_code == 201

    def predict(_):
        body = {"image": png_url(99), "question": QUESTION, "max_tokens": 3}
        return httpx.post(f"{url}/v1/tasks/colours/predict", json=body, headers=headers, timeout=60)

    answers = concurrently(predict, range(8))
    assert [r.status_code for r in answers] == [200] * 8
    assert len({r.json()["answer"] for r in answers}) == 1
    assert len({r.headers[cluster.REPLICA_HEADER] for r in answers}) == 2
    listed = httpx.get(f"{url}/v1/tasks", headers=headers, timeout=60).json()["data"]
    assert [t["name"] for t in listed] == ["colours"]
    assert httpx.delete(f"{url}/v1/tasks/colours", headers=headers, timeout=60).status_code == 200
    gone = concurrently(predict, range(4))  # whichever replica answers: the task is gone from the store
    assert [r.status_code for r in gone] == [404] * 4


def test_two_replicas_adding_the_same_demos_at_once_store_each_once(served, model_dir, tmp_path):
    url, _ = served
    directory, saved = model_dir
    aim = saved.aim
    batches = [[(10 + i, "red"), (20 + i, "blue cat")] for i in range(4)]
    with bank_after_merge(directory, tmp_path / "before.sqlite") as bank:
        existing = set(bank.keys())
    responses = concurrently(
        lambda demos: post_chat(url, chat(demos)), batches * 2
    )  # every batch twice at once
    assert [r.status_code for r in responses] == [200] * len(responses)
    assert len({r.headers[cluster.REPLICA_HEADER] for r in responses}) == 2
    sent = {demo_key(aim, s, a) for batch in batches for s, a in batch}
    assert existing.isdisjoint(sent)
    with bank_after_merge(directory, tmp_path / "after.sqlite") as bank:
        assert set(bank.keys()) == existing | sent  # each demo once, whichever replicas read it


def test_a_replica_killed_mid_load_is_replaced_and_the_bank_loses_nothing(served, model_dir, tmp_path):
    url, _ = served
    directory, saved = model_dir
    aim = saved.aim
    with bank_after_merge(directory, tmp_path / "before.sqlite") as bank:
        existing = set(bank.keys())
    results, stop, lock = [], threading.Event(), threading.Lock()
    counter = iter(range(1000, 100_000))

    def client():
        while not stop.is_set():
            with lock:
                seeds = (next(counter), next(counter))
            demos = [(seeds[0], "red"), (seeds[1], "green bird")]
            try:
                response = post_chat(url, chat(demos), timeout=30)
                outcome = (response.status_code, response.headers.get(cluster.REPLICA_HEADER))
            except httpx.HTTPError:
                outcome = (0, None)
            with lock:
                results.append((demos, *outcome))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(r[1] == 200 for r in results) >= 6, "requests under load")
        before = {r[2] for r in results if r[1] == 200}
        victim = replica_processes()[0]
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = len(results)
        wait_for(
            lambda: any(r[1] == 200 and r[2] not in before for r in results[killed_at:]), "a new replica"
        )
        replaced_at = len(results)
        wait_for(lambda: len(results) >= replaced_at + 6, "requests after the replacement")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert all(status == 200 for _, status, _ in results[replaced_at:])
    assert len(replica_processes()) == 2
    answered = {demo_key(aim, s, a) for demos, status, _ in results if status == 200 for s, a in demos}
    sent = {demo_key(aim, s, a) for demos, _, _ in results for s, a in demos}
    assert merge_replica_shards(directory / "bank.sqlite") >= 1  # the dead replica's shard; live ones stay
    with bank_after_merge(directory, tmp_path / "after.sqlite") as bank:
        added = set(bank.keys()) - existing
    assert not answered - added, "demos of answered requests are missing from the bank"
    assert not added - sent, "the bank holds demos that were never sent"


def replica_processes() -> list[psutil.Process]:
    """This test's Serve replicas: descendants of the test process (its local Ray cluster), by process title."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "ServeReplica" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def wait_for(condition, what: str, seconds: float = 240) -> None:
    """Poll `condition`; the bound is generous because a replica starting on a loaded 2-core machine is slow."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
