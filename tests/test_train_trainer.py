"""The projector trainer on a tiny LLaVA: the loss falls only through what the demos carry, the backbone stays
bitwise frozen, a killed and resumed run ends where an uninterrupted one does, and caches change nothing but speed."""

from __future__ import annotations

import pytest
import torch

from aim_icl import AIM, Demo, Query
from aim_icl.bank import DemoBank
from aim_icl.errors import AIMError
from aim_icl.testing.tiny import build_tiny
from aim_icl.train import trainer as trainer_module
from aim_icl.train.config import load_config
from aim_icl.train.synthetic import dax_documents, write_corpus
from aim_icl.train.trainer import checkpoint_backbone, train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Training runs share two cores with other work: one thread is faster than contended two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llava() -> AIM:
    """A tiny LLaVA whose random LM is steerable enough (init range 0.2) to learn from fused tokens, with the
    residual projector whose copy-map fit these tests count."""
    return AIM(*build_tiny("llava", text_config={"initializer_range": 0.2}), projector_name="residual")


def settings(files, output, **overrides):
    base = {"paths": files, "format": "obelics", "output": str(output), "log_every": 1, "lr": 1e-2}
    base.update(warmup_steps=2, batch_size=4, max_steps=6, checkpoint_every=0)
    return load_config(None, {**base, **overrides})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return write_corpus(root, "obelics", dax_documents(160, seed=1), shards=2), root / "images"


def eval_loss(aim: AIM, docs, mismatched: bool) -> float:
    """Mean target loss on documents with their own first pair as the demo, or another document's."""
    demos = [Demo(*doc[0]) for doc in docs]
    if mismatched:
        demos = demos[1:] + demos[:1]
    queries = [Query(doc[-1][0], "", [demo], doc[-1][1]) for doc, demo in zip(docs, demos)]
    with torch.no_grad():
        return aim.forward(aim.build_batch(queries, mode="aim")).loss.item()


def test_the_loss_falls_only_through_what_the_demos_carry(corpus, tmp_path, capsys):
    files, images = corpus
    aim = tiny_llava()
    backbone = {k: v.clone() for k, v in aim.model.state_dict().items()}
    held_out = dax_documents(48, seed=99)
    summary = train(
        settings(files, tmp_path / "out", image_root=str(images), max_steps=40, batch_size=8), aim
    )
    out = capsys.readouterr().out
    assert "trainable: 12.6K of 291.1K parameters" in out and "trained 40 steps on 320 samples" in out
    assert summary.steps == 40 and summary.samples == 320 and summary.skipped == {}
    matched, mismatched = eval_loss(aim, held_out, False), eval_loss(aim, held_out, True)
    assert matched < mismatched - 0.3  # the colour comes through the fused demo, not a learnt prior
    losses = [line["loss"] for line in _metrics(tmp_path / "out") if "loss" in line]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.5
    # bitwise frozen (on a GPU the backbone is cast once to the mixed-precision dtype, then never changes)
    assert all(torch.equal(v.cpu(), backbone[k].to(v.dtype)) for k, v in aim.model.state_dict().items())
    reloaded = AIM(*build_tiny("llava", text_config={"initializer_range": 0.2}), projector=tmp_path / "out")
    assert all(
        torch.equal(a.cpu(), b.cpu())
        for a, b in zip(reloaded.projector.state_dict().values(), aim.projector.state_dict().values())
    )


def readable_slots(aim: AIM, docs) -> float:
    """The share of fused demo tokens whose nearest word (through the tied input embeddings) is their own."""
    states = aim.encode([Demo(*pair) for doc in docs for pair in doc[:-1]])
    embedding = aim.model.get_input_embeddings().weight
    hits = [(f @ embedding.T).argmax(-1) == s.token_ids for f, s in zip(aim.fuse(states), states)]
    return torch.cat(hits).float().mean().item()


def test_the_identity_loss_keeps_fused_tokens_readable_as_their_words(corpus, tmp_path):
    files, images = corpus
    readable = {}
    for weight in (0.0, 1.0):
        aim = tiny_llava()
        config = settings(files, tmp_path / str(weight), image_root=str(images), max_steps=20, batch_size=8)
        config.optim.identity_weight = weight
        train(config, aim)
        readable[weight] = readable_slots(aim, dax_documents(16, seed=99))
    assert readable[1.0] > readable[0.0] + 0.5  # measured: 0.86 against 0.01


def test_a_killed_run_resumes_to_the_same_projector(corpus, tmp_path, monkeypatch):
    files, images = corpus
    common = dict(
        image_root=str(images), grad_accum=2, samples_per_document=2, max_steps=7, checkpoint_every=2
    )
    whole = tiny_llava()
    train(settings(files, tmp_path / "whole", **common), whole)

    real_step = trainer_module.Trainer._optimizer_step

    def killed_during_step_6(self, batches):
        if self.step == 5:
            raise KeyboardInterrupt  # as if killed: the last checkpoint is step 4
        return real_step(self, batches)

    monkeypatch.setattr(trainer_module.Trainer, "_optimizer_step", killed_during_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(settings(files, tmp_path / "cut", **common), tiny_llava())
    monkeypatch.setattr(trainer_module.Trainer, "_optimizer_step", real_step)
    resumed = tiny_llava()
    summary = train(settings(files, tmp_path / "cut", resume="latest", **common), resumed)
    assert summary.steps == 7
    for a, b in zip(whole.projector.parameters(), resumed.projector.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    events = [line.get("event") for line in _metrics(tmp_path / "cut")]
    assert events.count("resume") == 1
    with pytest.raises(AIMError, match="already holds a training run"):
        train(settings(files, tmp_path / "cut", **common), tiny_llava())


def test_the_hidden_state_cache_changes_speed_not_training(corpus, tmp_path):
    files, images = corpus
    common = dict(image_root=str(images), batch_size=8, max_steps=24, fit_demos=16, cache_dtype="float32")
    common["mixed_precision"] = "no"  # on a GPU too: bf16 rounding would hide what is compared
    direct, cached, bank = tiny_llava(), tiny_llava(), tiny_llava()
    plain = train(settings(files, tmp_path / "direct", **common), direct)
    memory = train(settings(files, tmp_path / "memory", cache="memory", **common), cached)
    stored = train(settings(files, tmp_path / "bank", cache=str(tmp_path / "demos.bank"), **common), bank)
    assert plain.demos_reused == 0
    # the fit reads 16 pairs of 8 documents; 192 samples over 160 two-pair documents each use the first pair as
    # their demo: 152 more are read, and the fit's 8 first pairs plus the second epoch's 32 come from the cache
    assert (memory.demos_read, memory.demos_reused) == (plain.demos_read - 40, 40) == (168, 40)
    assert (stored.demos_read, stored.demos_reused) == (168, 40)
    assert len(DemoBank(tmp_path / "demos.bank", bank)) == 168  # the Demonstration Bank's own file format
    for model in (cached, bank):
        for a, b in zip(direct.projector.parameters(), model.projector.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_stores_fewer_activations_and_gives_the_same_gradients():
    aim = tiny_llava()
    aim.fit_projector([Demo(*pair) for doc in dax_documents(4) for pair in doc])
    docs = dax_documents(2, seed=3)
    demos = aim.encode([Demo(*doc[0]) for doc in docs])
    queries = [Query(doc[-1][0], "", [s], doc[-1][1]) for doc, s in zip(docs, demos)]

    def gradients() -> tuple[list[torch.Tensor], int]:
        """Projector gradients, and the bytes autograd kept for backward outside checkpointed layers."""
        kept = []

        def pack(t):
            kept.append(t.numel() * t.element_size())
            return t

        aim.projector.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = aim.forward(aim.build_batch(queries, mode="aim")).loss
        loss.backward()
        return [p.grad.clone() for p in aim.projector.parameters()], sum(kept)

    plain, plain_bytes = gradients()
    checkpoint_backbone(aim.model)
    recomputed, checkpointed_bytes = gradients()
    assert checkpointed_bytes < 0.8 * plain_bytes  # the layers kept nothing; logits and loss still do
    for a, b in zip(plain, recomputed):
        torch.testing.assert_close(a, b)
    layer = next(m for m in aim.model.modules() if type(m).__name__ == "LlamaDecoderLayer")
    assert layer.training and not layer.mlp.training  # only the checkpointed layer's flag: dropout stays off


def test_bad_data_is_counted_in_the_summary_and_training_goes_on(tmp_path):
    files = write_corpus(tmp_path, "mmc4", dax_documents(12, seed=4))
    with open(files[0], "a") as f:
        f.write("{broken json\n")
        f.write(
            '{"text_list": ["a", "b"], "image_info": [{"image_name": "gone.png", "matched_text_index": 0}]}\n'
        )
    summary = train(
        settings(files, tmp_path / "out", format="mmc4", image_root=str(tmp_path / "images")), tiny_llava()
    )
    assert summary.steps == 6
    assert summary.skipped["malformed record"] >= 1 and summary.skipped["missing image"] >= 1
    assert "malformed record" in (tmp_path / "out" / "summary.json").read_text()


def _metrics(output) -> list[dict]:
    import json

    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_runs_in_one_process_may_use_different_precisions(corpus, tmp_path):
    files, images = corpus
    half = tiny_llava()
    train(
        settings(files, tmp_path / "bf16", image_root=str(images), mixed_precision="bf16", max_steps=2), half
    )
    assert half.backbone.dtype == torch.bfloat16  # the frozen backbone follows the mixed precision
    full = train(
        settings(files, tmp_path / "fp32", image_root=str(images), mixed_precision="no", max_steps=2),
        tiny_llava(),
    )
    assert full.steps == 2
