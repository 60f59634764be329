"""Demonstration Bank: stored demos read back as fresh ones, bound to one backbone, builds that survive SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_demos, tiny_aim

from aim_icl import AIM, AIMError, Demo, DemoBank
from aim_icl.bank import BankStore, backbone_fingerprint, content_key
from aim_icl.bank.fingerprint import weights_hash
from aim_icl.cli import main
from aim_icl.testing.tiny import build_tiny, tiny_image

QUERY = "question: what is it? answer:"


def fused_close(stored: torch.Tensor, fresh: torch.Tensor, dtype: torch.dtype) -> bool:
    """Equal within the stored dtype's precision (float32: exactly)."""
    if dtype == torch.float32:
        return torch.equal(stored, fresh)
    return bool(
        (stored - fresh).abs().max() <= 2 * torch.finfo(dtype).eps * fresh.abs().max().clamp_min(1e-3)
    )


# -- round trip ---------------------------------------------------------------------------------------------


def test_a_stored_demo_gives_the_fused_tokens_of_a_fresh_reading(aim, tmp_path):
    demos = make_demos(3, seed=2)
    demos[0].metadata.update(id="q17", label="red", source="train")
    with DemoBank(tmp_path / "bank.sqlite", aim) as bank:
        keys = bank.add(demos, batch_size=2, progress=False)
    with DemoBank(tmp_path / "bank.sqlite", aim) as reopened:  # read back from the file, not from memory
        stored = [reopened.get(k) for k in keys]
    assert stored[0].metadata == {"id": "q17", "label": "red", "source": "train"}
    assert [s.text for s in stored] == [d.text for d in demos]
    with torch.no_grad():
        fresh = aim.aggregate(demos)
        for demo, item, fused in zip(demos, stored, fresh):
            assert torch.equal(item.token_ids, aim.encoder.text_ids(demo.text))
            assert fused_close(aim.project(item.hidden), fused, torch.float16)
        from_bank = aim.build_inputs(tiny_image(9), QUERY, stored, "aim")["inputs_embeds"]
        from_fresh = aim.build_inputs(tiny_image(9), QUERY, fresh, "aim")["inputs_embeds"]
    assert fused_close(from_bank, from_fresh, torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bank_dtype_option(llava, tmp_path, dtype):
    demo = make_demos(1, seed=4)[0]
    with DemoBank(tmp_path / "bank.sqlite", llava, dtype=dtype) as bank:
        item = bank.get(bank.add([demo], progress=False)[0])
    assert item.hidden.dtype == dtype
    with torch.no_grad():
        assert fused_close(llava.project(item.hidden), llava.aggregate(demo), dtype)


def test_adding_again_reads_nothing_and_keys_follow_the_input(llava, tmp_path, monkeypatch):
    demos = make_demos(5, seed=5)
    with DemoBank(tmp_path / "bank.sqlite", llava) as bank:
        first = bank.add(demos[:3], progress=False)
        read = []
        original = llava.encode
        monkeypatch.setattr(llava, "encode", lambda ds, **kw: read.extend(ds) or original(ds, **kw))
        keys = bank.add([demos[1], *demos, demos[4]], progress=False)
        assert [d.text for d in read] == [d.text for d in demos[3:]]  # only the new demos, each once
        assert keys == [first[1], *first, bank.key(demos[3]), bank.key(demos[4]), bank.key(demos[4])]
        assert len(bank) == 5 and sorted(bank.keys()) == sorted(set(keys))
        assert keys[0] in bank and "nope" not in bank and bank.get("nope") is None


def test_states_reads_only_what_is_missing(llava, tmp_path):
    demos = make_demos(4, seed=6)
    with DemoBank(tmp_path / "bank.sqlite", llava) as bank:
        bank.add(demos[:2], progress=False)
        states = bank.states([demos[3], demos[0], demos[2]])
        assert [s.text for s in states] == [demos[3].text, demos[0].text, demos[2].text]
        assert len(bank) == 4
        assert states[1].key == bank.key(demos[0])


# -- keys and fingerprints ----------------------------------------------------------------------------------


def test_content_key_depends_on_pixels_text_and_template_not_on_the_file(llava, tmp_path):
    image = tiny_image(3)
    image.save(tmp_path / "a.png")
    image.convert("RGBA").save(tmp_path / "copy.png")  # other path, other file bytes, same pixels
    key = content_key(image, "a cat", llava.template)
    assert content_key(tmp_path / "a.png", "a cat", llava.template) == key
    assert content_key(str(tmp_path / "copy.png"), "a cat", llava.template) == key
    assert content_key(tiny_image(4), "a cat", llava.template) != key
    assert content_key(image, "a cat.", llava.template) != key
    assert content_key(image, "a cat", {"other": "template"}) != key


def test_a_bank_refuses_another_backbone(tmp_path):
    path = tmp_path / "bank.sqlite"
    DemoBank(path, tiny_aim("llava")).close()
    with pytest.raises(AIMError, match=r"built with another backbone \(model_type 'llava' != 'qwen2_vl'\)"):
        DemoBank(path, tiny_aim("qwen2_vl"))
    other_weights = AIM(*build_tiny("llava", seed=1))  # same config, other checkpoint
    with pytest.raises(AIMError, match="weights_hash"):
        DemoBank(path, other_weights)
    other_layer = AIM(tiny_aim("llava").model, tiny_aim("llava").encoder.processor, layer=1)
    with pytest.raises(AIMError, match="layer -1 != 1"):
        DemoBank(path, other_layer)
    with DemoBank(path, tiny_aim("llava")) as bank:  # the right backbone still opens it
        assert len(bank) == 0


def test_weights_hash_samples_tensors_of_any_size():
    """Sample positions are exact integers: float positions overrun tensors of more than 2**24 elements."""
    big = torch.nn.Module()
    big.register_buffer("values", torch.zeros(2**24 + 2, dtype=torch.uint8))
    before = weights_hash(big)
    big.values[-1] = 1  # the last element is sampled
    assert weights_hash(big) != before


def test_fingerprint_survives_save_and_reload(llava, saved_model):
    reloaded = AIM.from_pretrained(saved_model)
    ours, theirs = backbone_fingerprint(llava), backbone_fingerprint(reloaded)
    assert theirs["name_or_path"] == str(saved_model) and ours["name_or_path"] == ""
    assert {k: v for k, v in ours.items() if k != "name_or_path"} == {
        k: v for k, v in theirs.items() if k != "name_or_path"
    }


def test_files_that_are_not_banks_are_refused(llava, tmp_path):
    (tmp_path / "text.sqlite").write_text("not a database at all, just some text " * 40)
    with pytest.raises(AIMError, match="cannot open bank"):
        DemoBank(tmp_path / "text.sqlite", llava)
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(AIMError, match="not an aim-icl bank"):
        DemoBank(tmp_path / "other.sqlite", llava)
    with pytest.raises(AIMError, match="no bank at"):
        BankStore(tmp_path / "missing.sqlite")


def test_a_damaged_row_is_reported_not_misread(llava, tmp_path):
    with DemoBank(tmp_path / "bank.sqlite", llava) as bank:
        key = bank.add(make_demos(1), progress=False)[0]
        bank.store.conn.execute("UPDATE demos SET hidden = substr(hidden, 1, 10)")
        with pytest.raises(AIMError, match=f"bank row {key[:12]} is corrupt"):
            bank.get(key)


def test_bad_metadata_writes_nothing_of_its_batch(llava, tmp_path):
    demos = make_demos(3, seed=8)
    demos[2].metadata["when"] = object()
    with DemoBank(tmp_path / "bank.sqlite", llava) as bank:
        bank.add(demos[:1], progress=False)
        with pytest.raises(AIMError, match="not JSON-serialisable"):
            bank.add(demos[1:], batch_size=2, progress=False)
        assert bank.keys() == [bank.key(demos[0])]


# -- building from a demo file ------------------------------------------------------------------------------


@pytest.fixture
def saved_model(saved_llava) -> Path:
    return saved_llava.model


def write_demo_file(folder: Path, n: int, seed: int = 0) -> tuple[Path, list[Demo]]:
    """n demos as PNG files + a JSONL file naming them relative to its folder."""
    folder.mkdir(exist_ok=True)
    demos = make_demos(n, seed=seed)
    lines = []
    for i, demo in enumerate(demos):
        demo.image.save(folder / f"{seed}-{i}.png")
        demo.metadata.update(id=f"d{i}", label=demo.text.split()[-1])
        lines.append(json.dumps({"image": f"{seed}-{i}.png", "text": demo.text, **demo.metadata}))
    path = folder / f"demos{seed}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, demos


def build_args(model: Path, demos: Path, bank: Path, *extra: str) -> list[str]:
    return [
        "bank",
        "build",
        "--model",
        str(model),
        "--demos",
        str(demos),
        "--bank",
        str(bank),
        "--no-progress",
        *extra,
    ]


def check_bank(path: Path, model: Path, demos: list[Demo]) -> None:
    """Exactly these demos, once each, every row readable and equal to a fresh reading; the file is sound."""
    aim = AIM.from_pretrained(model)
    with DemoBank(path, aim) as bank:
        assert sorted(bank.keys()) == sorted({bank.key(d) for d in demos})
        for demo in demos:
            item = bank.get(bank.key(demo))
            assert item.metadata["id"] and item.text == demo.text
            fresh = aim.encode([demo])[0]  # the stored states are the demo's reading (the projector aside)
            assert torch.equal(item.token_ids, fresh.token_ids)
            assert fused_close(item.hidden.float(), fresh.hidden.float(), torch.float16)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT COUNT(*) = COUNT(DISTINCT key) FROM demos").fetchone() == (1,)
    conn.close()


def test_build_skips_and_reports_bad_lines(saved_model, tmp_path, capsys):
    demo_file, demos = write_demo_file(tmp_path / "data", 3)
    (tmp_path / "data" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    bad = [
        {"image": "gone.png", "text": "question: what? answer: red"},
        {"image": "broken.png", "text": "question: what? answer: red"},
        {"image": "0-0.png"},
    ]
    with demo_file.open("a") as f:
        f.write("\n".join(json.dumps(b) for b in bad) + "\n{not json\n")
    bank = tmp_path / "bank.sqlite"
    assert main(build_args(saved_model, demo_file, bank)) == 0
    out = capsys.readouterr().out
    assert "added 3, already stored 0" in out and "skipped 4" in out
    assert "line 4: image not found" in out and "line 5: cannot read image" in out
    assert 'line 6: expected an object with a non-empty "text"' in out and "line 7: not valid JSON" in out
    check_bank(bank, saved_model, demos)
    assert main(build_args(saved_model, demo_file, bank)) == 0  # incremental: nothing new to add
    assert "added 0, already stored 3" in capsys.readouterr().out

    only_bad = tmp_path / "data" / "bad.jsonl"
    only_bad.write_text("\n".join(json.dumps(b) for b in bad) + "\n")
    assert (
        main(build_args(saved_model, only_bad, tmp_path / "other.sqlite")) == 2
    )  # nothing built is a failure
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar: one line
    assert err.startswith("aim-icl bank: error: no line of") and "line 1: image not found" in err


KILLABLE_BUILD = """
import sys, time
from pathlib import Path
from aim_icl.bank import store
commit = store._Transaction.__exit__
def slow_commit(self, *exc):  # hold each write transaction open, rows written but not committed, and say so
    flag = Path(sys.argv[1])
    flag.touch()
    time.sleep(0.3)
    flag.unlink()
    return commit(self, *exc)
store._Transaction.__exit__ = slow_commit
from aim_icl.cli import main
sys.exit(main(sys.argv[2:]))
"""


def kill_inside_a_transaction(args: list[str], bank: Path, kill_at: int) -> None:
    """Run a build in a real subprocess; SIGKILL it while it holds a write transaction, once `kill_at` rows exist."""
    flag = bank.with_name("commit-pending")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_BUILD, str(flag), *args], env=env, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if flag.exists() and len(stored_keys(bank)) >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the build ended before it could be killed"
    finally:
        proc.kill()  # never leave it running if the test fails (a no-op once it has ended)


def stored_keys(bank: Path) -> list[str]:
    try:
        with sqlite3.connect(bank) as conn:
            return [k for (k,) in conn.execute("SELECT key FROM demos")]
    except sqlite3.OperationalError:  # no bank or no table yet
        return []


def test_a_build_killed_with_sigkill_completes_on_rerun(saved_model, tmp_path, capsys):
    demo_file, demos = write_demo_file(tmp_path / "data", 16, seed=3)
    bank = tmp_path / "bank.sqlite"
    args = build_args(saved_model, demo_file, bank, "--batch-size", "2")
    kill_inside_a_transaction(args, bank, kill_at=4)
    survived = stored_keys(bank)
    assert 4 <= len(survived) < len(demos) and len(survived) % 2 == 0  # whole batches only: none torn
    assert main(args) == 0
    assert f"added {len(demos) - len(survived)}, already stored {len(survived)}" in capsys.readouterr().out
    check_bank(bank, saved_model, demos)
    assert set(survived) <= set(stored_keys(bank))  # nothing lost


def test_merging_shards_equals_one_build(llava, tmp_path, capsys):
    demos = make_demos(6, seed=9)
    with DemoBank(tmp_path / "a.sqlite", llava) as a, DemoBank(tmp_path / "b.sqlite", llava) as b:
        a.add(demos[:4], progress=False)
        b.add(demos[2:], progress=False)  # overlapping shards: shared demos are stored once
    with DemoBank(tmp_path / "whole.sqlite", llava) as whole:
        whole.add(demos, progress=False)
    merged = tmp_path / "merged.sqlite"
    assert main(["bank", "merge", str(merged), str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite")]) == 0
    assert "b.sqlite: merged 2 new demos" in capsys.readouterr().out
    with BankStore(merged) as m, BankStore(tmp_path / "whole.sqlite") as w:
        assert m.keys() == w.keys() and m.fingerprint == w.fingerprint
        for ours, theirs in zip(m.rows(), w.rows()):
            ours, theirs = ours.states, theirs.states
            assert ours.metadata == theirs.metadata and torch.equal(ours.token_ids, theirs.token_ids)
            assert fused_close(ours.hidden.float(), theirs.hidden.float(), torch.float16)
    DemoBank(tmp_path / "other.sqlite", tiny_aim("qwen2_vl")).close()
    with BankStore(merged) as m, pytest.raises(AIMError, match="another backbone"):
        m.merge(tmp_path / "other.sqlite")


def test_build_merges_shards_left_by_a_killed_sharded_build(saved_model, tmp_path, capsys):
    """Shard files of an interrupted `accelerate launch` build are merged by the next build and removed."""
    demo_file, demos = write_demo_file(tmp_path / "data", 4, seed=5)
    aim = AIM.from_pretrained(saved_model)
    bank = tmp_path / "bank.sqlite"
    with DemoBank(tmp_path / "bank.sqlite.shard-1-of-2", aim) as shard:
        shard.add(demos[1::2], progress=False)
    assert main(build_args(saved_model, demo_file, bank)) == 0
    assert "added 2, already stored 2, merged 2 from shards" in capsys.readouterr().out
    assert not list(tmp_path.glob("bank.sqlite.shard*"))
    check_bank(bank, saved_model, demos)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_launch_splits_a_build_over_processes(saved_model, tmp_path):
    demo_file, demos = write_demo_file(tmp_path / "data", 7, seed=7)
    with demo_file.open("a") as f:
        f.write(json.dumps({"image": "gone.png", "text": "question: what? answer: red"}) + "\n")
    bank = tmp_path / "bank.sqlite"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "aim_icl.cli"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([*launch, *build_args(saved_model, demo_file, bank)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "added 7, already stored 0, merged 7 from shards, skipped 1" in done.stdout
    assert "skipped line 8: image not found" in done.stdout
    assert done.stdout.count("added") == 1  # one report, from the main process
    assert not list(tmp_path.glob("bank.sqlite.shard*"))
    check_bank(bank, saved_model, demos)


def test_bank_verbs_have_help(capsys):
    for verb in (["bank"], ["bank", "build"], ["bank", "info"], ["bank", "list"], ["bank", "merge"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*verb, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: aim-icl {' '.join(verb)}" in capsys.readouterr().out


def test_info_and_list_describe_a_bank(saved_model, tmp_path, capsys):
    demo_file, demos = write_demo_file(tmp_path / "data", 3, seed=6)
    bank = tmp_path / "bank.sqlite"
    assert main(build_args(saved_model, demo_file, bank)) == 0
    capsys.readouterr()
    assert main(["bank", "info", str(bank)]) == 0
    info = capsys.readouterr().out
    n_tokens = sum(len(tiny_aim("llava").encoder.text_ids(d.text)) for d in demos)
    assert "demos       3 (3 with an image embedding)" in info and f"tokens      {n_tokens} " in info
    assert "float16, width 64" in info and f"llava {saved_model}, float32, layer -1" in info
    assert main(["bank", "list", str(bank), "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["id"] for r in listed) == ["d0", "d1", "d2"]
    assert {r["text"] for r in listed} == {d.text for d in demos}
    assert main(["bank", "list", str(bank), "--limit", "1"]) == 0
    assert "... 2 more" in capsys.readouterr().out
    assert main(["bank", "info", str(tmp_path / "none.sqlite")]) == 2
    assert "error: no bank at" in capsys.readouterr().err
