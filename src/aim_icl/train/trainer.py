"""Training the AIM projector on interleaved image-text documents: setup / train / save_checkpoint / cleanup.

One optimizer step, per process: draw `batch_size` samples (`Query`s: k demo pairs + a target pair each); get the
demos' pre-projector hidden states (read through the frozen backbone, or from the cache); project every demo token
of the batch in one call of the (DDP-wrapped) projector (`aim.fuse`); build the batch with those fused tensors as
the demos and the target pair's image and text; the loss is the LM loss on the target text only. It flows back
through the frozen LM into the projector, the only module with `requires_grad`. The same code runs on CPU, one
GPU or many (accelerate).
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import gather_object, set_seed

from aim_icl.bank.cache import open_states_cache
from aim_icl.core.aim import AIM
from aim_icl.core.demo import Demo, Query
from aim_icl.core.dtypes import torch_dtype
from aim_icl.core.loading import load_model, load_processor
from aim_icl.core.pipeline import default_workers
from aim_icl.core.placement import use_cpu
from aim_icl.core.projector import save_projector
from aim_icl.core.projector_config import CONFIG_NAME
from aim_icl.core.prompt import Encoded, PromptEncoder, laid_out
from aim_icl.errors import AIMError
from aim_icl.train import checkpoint as ckpt
from aim_icl.train.config import TrainConfig, save_config
from aim_icl.train.documents import Skips
from aim_icl.train.objectives import identity_loss, text_match_loss
from aim_icl.train.progress import MetricsLog, Throughput, TrainSummary, progress_bar
from aim_icl.train.readers import READERS, ReaderOptions, expand_sources
from aim_icl.train.samples import TextBudget
from aim_icl.train.stream import Position, SampleRules, SampleStream, whole_text

REFUSED = "prompt refused"  # a sample whose prompt the processor or the context refused


def train(config: TrainConfig, aim: AIM | None = None) -> TrainSummary:
    """Train the projector as `config` says; `aim` (an already-loaded AIM) replaces loading `config.model`."""
    trainer = Trainer(config, aim)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.cleanup()


class Trainer:
    def __init__(self, config: TrainConfig, aim: AIM | None = None):
        self.config = config.validate()
        self.output = Path(config.output)
        self.aim = aim
        self.step = 0
        self.seconds = 0.0  # training time before this segment (a resumed run continues the count)

    # -- setup -------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.config
        self.accelerator = Accelerator(
            cpu=use_cpu(cfg.device),  # accelerate sets up multi-process CPU runs only when told
            mixed_precision=_mixed_precision(cfg.mixed_precision),
            log_with=_trackers(cfg.log_with),
            project_dir=str(self.output),
        )
        set_seed(cfg.seed)
        resume = self._resume_dir()
        reader = READERS.get(cfg.data.format)()
        files = expand_sources(cfg.data.paths, reader.suffixes)  # before a model load that may take minutes
        self._build_stream(reader, files, whole_text).check_readable()  # a corpus giving nothing fails here
        self.aim = self.aim or self._load_aim()
        self._place_backbone()
        self.stream = self._build_stream(reader, files)
        self.drawn, self.refused = StreamState.of(self.stream), 0
        dtype = torch_dtype(cfg.cache_dtype)
        self.workers = default_workers(self.accelerator.device) if cfg.workers is None else cfg.workers
        self.states = open_states_cache(self.aim, cfg.cache, dtype, cfg.encode_batch_size, self.workers)
        if resume is None and not bool(getattr(self.aim.projector, "fitted", True)):
            self._fit_copy_map()
        if cfg.gradient_checkpointing:
            checkpoint_backbone(self.aim.model)
        optimizer = torch.optim.AdamW(
            self.aim.projector.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg))
        self.projector, self.optimizer = self.accelerator.prepare(self.aim.projector, optimizer)
        if resume is not None:
            self._restore(resume)
        self._start_logs(resumed=resume is not None)

    def _load_aim(self) -> AIM:
        cfg = self.config
        if cfg.model is None:
            raise AIMError("no model given: pass --model DIR_OR_ID")
        with self.accelerator.main_process_first():  # one download per machine
            model = load_model(cfg.model, dtype=self._backbone_dtype())
            processor = load_processor(cfg.model)
        return AIM(
            model,
            processor,
            projector=cfg.projector,
            layer=cfg.layer,
            projector_name=cfg.projector_name,
            projector_options=cfg.projector_options,
        )

    def _place_backbone(self) -> None:
        """Frozen backbone on this process's device in the backbone dtype; refuse one that would train."""
        model = self.aim.model.to(self.accelerator.device, self._backbone_dtype())
        if any(p.requires_grad for p in model.parameters()):
            raise AIMError("the backbone has parameters with requires_grad; AIM trains the projector only")
        trainable = sum(p.numel() for p in self.aim.projector.parameters())
        total = trainable + sum(p.numel() for p in model.parameters())
        self.accelerator.print(f"trainable: {_count(trainable)} of {_count(total)} parameters")

    def _backbone_dtype(self) -> torch.dtype:
        if self.config.dtype != "auto":
            return torch_dtype(self.config.dtype)
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            self.accelerator.mixed_precision, torch.float32
        )

    def _build_stream(self, reader, files: list[str], budget=None) -> SampleStream:
        """The stream of samples; `budget` (default: max_text_tokens of the model's tokenizer) cuts texts."""
        d = self.config.data
        image_root = None if d.image_root is None else Path(d.image_root)
        rules = SampleRules(
            d.min_shots, d.max_shots, d.samples_per_document, d.prompt, d.shuffle_files, d.targets, d.demos
        )
        return SampleStream(
            files,
            reader,
            ReaderOptions(image_root, d.min_sim),
            rules,
            budget or TextBudget(self.aim.encoder.tokenizer, d.max_text_tokens),
            seed=self.config.seed,
            rank=self.accelerator.process_index,
            world=self.accelerator.num_processes,
        )

    def _fit_copy_map(self) -> None:
        """Fit the fresh residual projector's copy map on the corpus's first demos (the same on every process)."""
        demos: list[Demo] = []
        for doc in self.stream.documents_of(rank_only=False):
            demos += doc.pairs[: self.config.fit_demos - len(demos)]
            if len(demos) >= self.config.fit_demos:
                break  # a corpus without a readable pair is an error of `documents_of`, with counts and reasons
        self.accelerator.print(f"fitting the projector's copy map on {len(demos)} demos")
        self.aim.fit_projector(self.states.states(demos))

    def _resume_dir(self) -> Path | None:
        """The checkpoint to resume from; refuses to train over an earlier run's output unless resuming."""
        requested, latest = self.config.resume, ckpt.latest_checkpoint(self.output)
        finished = (self.output / CONFIG_NAME).exists()
        if requested is None and (latest or finished):
            raise AIMError(
                f"{self.output} already holds a training run: pass --resume to continue it, or another --output"
            )
        if requested == "latest" and latest is None and finished:
            raise AIMError(f"{self.output} holds a finished run without checkpoints: nothing to resume")
        found = latest if requested == "latest" else None if requested is None else Path(requested)
        if requested not in (None, "latest") and not found.is_dir():
            raise AIMError(f"no checkpoint at {found}")
        return (
            found  # None: a fresh run (also `--resume` on an empty output, so job scripts can always pass it)
        )

    def _restore(self, directory: Path) -> None:
        projector = self.accelerator.unwrap_model(self.projector)
        trainer, state = ckpt.read_checkpoint(
            directory, self.accelerator.process_index, projector, self.optimizer
        )
        if trainer["world_size"] != self.accelerator.num_processes:
            raise AIMError(
                f"{directory} was written by {trainer['world_size']} processes; resume it with the same number"
            )
        self.scheduler.load_state_dict(trainer["scheduler"])
        self.step, self.seconds = trainer["step"], trainer["seconds"]
        self.stream.position = Position(**state["position"])
        self.stream.skips = Skips(state["skips"])
        self.stream.documents = state["documents"]
        self.refused = self.stream.skips.pop(REFUSED, 0)
        self.drawn = StreamState.of(self.stream)
        self.accelerator.print(f"resumed from {directory} at step {self.step}")

    def _start_logs(self, resumed: bool) -> None:
        main = self.accelerator.is_main_process
        if main:
            self.output.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.output / "train_config.yaml")
        self.log = MetricsLog(self.output / "metrics.jsonl", enabled=main)
        self.log.write({"event": "resume" if resumed else "start", "step": self.step})
        if self.accelerator.log_with:
            self.accelerator.init_trackers("aim-icl-train", config=_scalars(self.config))

    # -- train -------------------------------------------------------------------------------------------------

    def train(self) -> TrainSummary:
        cfg, acc = self.config, self.accelerator
        # each batch's prompts are prepared by the pipeline's workers while earlier batches train
        jobs = _batches(self.stream, cfg.optim.batch_size)
        batches = self.aim.pipeline(self.workers).map(prepare_training_batch, jobs)
        per_step = cfg.optim.batch_size * cfg.optim.grad_accum * acc.num_processes
        bar = progress_bar(cfg.optim.max_steps, self.step, acc.is_main_process)
        started, window, loss_sum = time.perf_counter(), Throughput(), torch.zeros((), device=acc.device)
        while self.step < cfg.optim.max_steps:
            loss_sum += self._optimizer_step(batches)
            self.step += 1
            window.add(per_step)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.optim.max_steps:
                steps = cfg.log_every if self.step % cfg.log_every == 0 else self.step % cfg.log_every
                self._log(bar, acc.reduce(loss_sum, "mean").item() / steps, window.rate())
                loss_sum.zero_()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.seconds += time.perf_counter() - started
                started = time.perf_counter()
                self.save_checkpoint()
        bar.close()
        self.seconds += time.perf_counter() - started
        return self._finish()

    def _optimizer_step(self, batches) -> torch.Tensor:
        """`grad_accum` micro-batches, one update; returns the step's mean loss (a tensor: no device sync)."""
        accum, total = self.config.optim.grad_accum, 0.0
        for micro in range(accum):
            batch = next(batches)
            self.drawn, self.refused = batch.drawn, self.refused + batch.refused
            last = micro == accum - 1
            with nullcontext() if last else self.accelerator.no_sync(self.projector):
                with self.accelerator.autocast():
                    loss = self._loss(batch)
                self.accelerator.backward(loss / accum)
            total = total + loss.detach() / accum
        if self.config.optim.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.projector.parameters(), self.config.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _loss(self, batch: TrainingBatch) -> torch.Tensor:
        if batch.encoded is None:  # nothing buildable: a zero loss that still touches every parameter (DDP)
            return sum(p.sum() for p in self.projector.parameters()) * 0.0
        optim = self.config.optim
        states = self.states.states([d for s in batch.kept for d in s.demos])  # no grad: frozen backbone
        fused = self.aim.fuse(states, projector=self.projector)  # one projector call for the batch
        inputs = self.aim.finish(batch.encoded, _per_sample(fused, batch.kept))
        output = self.aim.forward(inputs)
        loss = output.loss
        if optim.identity_weight:
            embedding = self.aim.model.get_input_embeddings().weight  # (vocab, embed), frozen
            loss = loss + optim.identity_weight * identity_loss(embedding, fused, states)
        if optim.text_match_weight:
            with torch.no_grad():  # the same prompts in `text` mode: each slot holds its own word's embedding
                text = [self.aim.backbone.embed(s.token_ids) for s in states]
                text_logits = self.aim.forward(
                    self.aim.finish(batch.encoded, _per_sample(text, batch.kept))
                ).logits
            loss = loss + optim.text_match_weight * text_match_loss(
                output.logits, text_logits, inputs["labels"]
            )
        return loss

    def _log(self, bar, loss: float, rate: float) -> None:
        lr = self.scheduler.get_last_lr()[0]
        skipped = sum(sum(s.values()) for s in gather_object([self._skips()]))
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}", skipped=skipped)
        record = {"step": self.step, "loss": loss, "lr": lr, "samples_per_s": rate, "skipped": skipped}
        self.log.write(record)
        if self.accelerator.log_with:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=self.step)

    # -- checkpoints and the end ---------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Projector, optimizer, scheduler, RNG states and data position of every process, written atomically."""
        acc, final = self.accelerator, ckpt.checkpoint_dir(self.output, self.step)
        temporary = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            temporary.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        ckpt.write_rank(temporary, acc.process_index, self._rank_state())
        if acc.is_main_process:
            trainer = {
                "step": self.step,
                "seconds": self.seconds,
                "world_size": acc.num_processes,
                "scheduler": self.scheduler.state_dict(),
            }
            projector = acc.unwrap_model(self.projector)
            ckpt.write_shared(temporary, projector, self.aim.projector_config, self.optimizer, trainer)
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.publish(temporary, final, self.config.keep_checkpoints)
        acc.wait_for_everyone()
        return final

    def _skips(self) -> dict[str, int]:
        """What this process skipped in the batches it trained on: the stream's skips and refused prompts."""
        return {**self.drawn.skips, **({REFUSED: self.refused} if self.refused else {})}

    def _rank_state(self) -> dict:
        return {
            "position": asdict(self.drawn.position),
            "skips": self._skips(),
            "documents": self.drawn.documents,
        }

    def _finish(self) -> TrainSummary:
        acc = self.accelerator
        if self.config.checkpoint_every and self.step % self.config.checkpoint_every:
            self.save_checkpoint()  # the end is resumable too (e.g. to train longer)
        counts = gather_object([(self._skips(), self.drawn.documents, self.states.read, self.states.reused)])
        skipped = Skips()
        for skips, *_ in counts:
            skipped.update(skips)
        summary = TrainSummary(
            steps=self.step,
            samples=self.step
            * self.config.optim.batch_size
            * self.config.optim.grad_accum
            * acc.num_processes,
            documents=sum(c[1] for c in counts),
            seconds=self.seconds,
            skipped=dict(skipped),
            demos_read=sum(c[2] for c in counts),
            demos_reused=sum(c[3] for c in counts),
            output=str(self.output),
        )
        if acc.is_main_process:
            save_projector(acc.unwrap_model(self.projector), self.aim.projector_config, self.output)
            summary.write(self.output / "summary.json")
            for line in summary.lines():
                print(line)
        acc.wait_for_everyone()
        return summary

    def cleanup(self) -> None:
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and accelerator.log_with:
            accelerator.end_training()
        if hasattr(self, "states"):
            self.states.close()
        # accelerate keeps its settings (mixed precision, ...) process-wide and refuses different ones later:
        # forget them, so another run in this process may choose its own (the process group itself stays)
        AcceleratorState._reset_state()
        GradientState._reset_state()


def checkpoint_backbone(model: torch.nn.Module) -> None:
    """Recompute the frozen backbone's layer activations during backward instead of storing them.

    Transformers checkpoints a layer only while it is in training mode; only the checkpointed layers get the
    training flag (not their submodules), so dropout stays off in the frozen model.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise AIMError(f"{type(model).__name__} does not support gradient checkpointing; drop the option")
    enable = getattr(model, "activation_checkpointing_enable", None)  # the name from transformers 5.x on
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if vars(module).get("gradient_checkpointing") is True:
            module.training = True


@dataclass
class StreamState:
    """The stream as it stood when a batch was drawn: what a checkpoint saves and the summary counts (the stream
    itself runs ahead, feeding the pipeline's prefetch)."""

    position: Position
    documents: int
    skips: dict[str, int]

    @classmethod
    def of(cls, stream: SampleStream) -> StreamState:
        return cls(stream.position, stream.documents, dict(stream.skips))


def _per_sample(vectors: list[torch.Tensor], samples: list[Query]) -> list[list[torch.Tensor]]:
    """The batch's demo vectors (in order) grouped by the sample they belong to."""
    flat = iter(vectors)
    return [[next(flat) for _ in s.demos] for s in samples]


def _batches(stream: SampleStream, size: int):
    """Jobs for `prepare_training_batch`: lists of `size` samples with the stream's state after the last one."""
    samples = iter(stream)
    while True:
        batch = [next(samples) for _ in range(size)]
        position = batch[-1][1]  # where the stream resumes after this batch
        yield [sample for sample, _ in batch], StreamState(position, stream.documents, dict(stream.skips))


@dataclass
class TrainingBatch:
    """A micro-batch with its prompts encoded (in a worker): the samples kept, and the stream position after it."""

    kept: list[Query]
    drawn: StreamState
    encoded: Encoded | None  # None: every sample was refused
    refused: int = 0


def prepare_training_batch(encoder: PromptEncoder, samples: list[Query], drawn: StreamState) -> TrainingBatch:
    """Encode the batch's prompts (demos as their text tokens' slots, target tokens labelled); a sample the
    processor or the context refuses is dropped and counted."""
    try:
        return TrainingBatch(samples, drawn, encoder.prepare([_laid_out(s) for s in samples], "aim"))
    except AIMError:
        kept = [s for s in samples if _preparable(encoder, s)]
        encoded = encoder.prepare([_laid_out(s) for s in kept], "aim") if kept else None
        return TrainingBatch(kept, drawn, encoded, len(samples) - len(kept))


def _laid_out(sample: Query) -> Query:
    return replace(sample, demos=laid_out(sample.demos, "aim"))


def _preparable(encoder: PromptEncoder, sample: Query) -> bool:
    try:
        encoder.prepare([_laid_out(sample)], "aim")
        return True
    except AIMError:
        return False


def _schedule(cfg: TrainConfig):
    """Linear warmup to the peak, then cosine down to `min_lr_ratio` of it at `max_steps`."""
    warmup, total, floor = cfg.optim.warmup_steps, cfg.optim.max_steps, cfg.optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _mixed_precision(setting: str) -> str | None:
    if setting != "auto":
        return setting
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # chosen by `accelerate launch` / `accelerate config`
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _trackers(setting: str):
    if setting == "auto":
        found = [name for name in ("tensorboard",) if importlib.util.find_spec(name) is not None]
        return found or None
    return None if setting == "none" else setting


def _scalars(config: TrainConfig) -> dict:
    """The config flattened to scalars, as trackers want it."""
    flat = {}
    for key, value in asdict(config).items():
        for sub, sub_value in value.items() if isinstance(value, dict) else [(key, value)]:
            flat[sub] = sub_value if isinstance(sub_value, (int, float, str, bool)) else str(sub_value)
    return flat


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
