"""``quickdraft train``: fit a ``ppd``, ``heads`` or ``eagle`` adapter to a frozen model on this machine.

Steps: (1) the model answers a prompt set greedily (cached, see :mod:`.data`);
(2) the drafter's few parameters are fitted to the model's own next-token
distributions (:mod:`.objectives`) with AdamW, a short warm-up and a cosine
decay; a checkpoint (safetensors: parameters, optimizer moments, step) is
written every ``checkpoint_every`` steps, and a run started again with the
same settings resumes from it; (3) top-1/top-k accuracy per predicted position
is measured on held-out prompts and stored in the adapter with the training
facts. For example (about half an hour for the embedded model)::

    train(kind="ppd", model="smollm2-135m-instruct", out="ppd.safetensors", minutes=30)
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..adapters import Adapter, model_sha256, read_adapter, save_adapter
from ..errors import QuickdraftError
from .data import Dataset, Sequence, build_dataset, corpus_sequences, read_prompts
from .objectives import Accuracy, EagleObjective, HeadsObjective, PPDObjective, anchor_range, evaluate

log = logging.getLogger(__name__)

KINDS = ("ppd", "heads", "eagle")
DEFAULT_LR = {"ppd": 1e-2, "heads": 2e-3, "eagle": 1e-3}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (a checkpoint resumes only under the same config)."""

    kind: str
    steps: int = 400
    lr: float | None = None  # None: DEFAULT_LR of the kind
    anchors: int = 48  # anchors per sequence per step
    sequences: int = 1  # sequences per step (heads: more, the steps are cheap)
    prompt_tokens: int = 3  # ppd
    heads: int = 3  # heads
    rank: int = 128  # heads
    token_input: bool = True  # heads: also read the next token (the bonus token at decoding time)
    vocab: int = 8192  # eagle: guesses come from this many of the tokens most used in the training answers
    intermediate: int = 768  # eagle: MLP width of its decoder layer
    warmup: int = 20
    seed: int = 0
    max_new_tokens: int = 160  # length of the model's answers in the training data
    data: str = "builtin"
    init: str | None = None  # start from this adapter's parameters (continue training it)
    corpus: tuple[str, ...] = ()  # text files whose sequences join the model's answers (teacher-forced)

    def __post_init__(self) -> None:
        object.__setattr__(self, "corpus", tuple(str(p) for p in self.corpus or ()))  # any paths, as strings
        if self.kind not in KINDS:
            raise QuickdraftError(f"unknown adapter kind {self.kind!r}; choose {' or '.join(KINDS)}")
        for name in ("steps", "anchors", "sequences", "prompt_tokens", "heads", "rank", "max_new_tokens", "vocab",
                     "intermediate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise QuickdraftError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.kind]

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class TrainReport:
    out: Path
    steps: int
    train_s: float
    first_loss: float
    last_loss: float
    accuracy: Accuracy
    resumed_from: int = 0
    losses: list[float] = field(default_factory=list)

    def lines(self) -> list[str]:
        acc = self.accuracy
        rows = [f"adapter {self.out}: {self.steps} steps, {self.train_s / 60:.1f} min of training"
                f"{f' (resumed at step {self.resumed_from})' if self.resumed_from else ''}; "
                f"loss {self.first_loss:.3f} -> {self.last_loss:.3f}",
                f"held-out accuracy over {acc.predictions} anchors (token at +d after the next one):"]
        for d, (t1, tk) in enumerate(zip(acc.top1, acc.topk)):
            rows.append(f"  +{d + 2}: top-1 {t1:6.1%}   top-{acc.k} {tk:6.1%}")
        return rows


def make_objective(config: TrainConfig, model, sequences: list[Sequence] | None = None,
                   extra: list[Sequence] | None = None):
    """The kind's objective; the training data pick the eagle drafter's vocabulary (the model's answers'
    tokens first, then the corpus's)."""
    if config.kind == "ppd":
        return PPDObjective(model, prompt_tokens=config.prompt_tokens, seed=config.seed)
    if config.kind == "eagle":
        return EagleObjective(model, sequences=sequences, extra=extra, vocab=config.vocab,
                              intermediate=config.intermediate, seed=config.seed)
    return HeadsObjective(model, heads=config.heads, rank=config.rank, token_input=config.token_input,
                          seed=config.seed)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth at ``config.steps``.

    >>> c = TrainConfig(kind="ppd", steps=100, lr=1.0, warmup=10)
    >>> learning_rate(c, 0), learning_rate(c, 10), round(learning_rate(c, 100), 3)
    (0.1, 1.0, 0.1)
    """
    base = config.learning_rate
    if step < config.warmup:
        return base * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def sample_batch(config: TrainConfig, sequences: list[Sequence], depth: int, step: int) -> list[tuple[Sequence, torch.Tensor]]:
    """The step's sequences and anchors: a pure function of (seed, step), so a resumed run continues the same way."""
    rng = np.random.default_rng([config.seed, step])
    batch = []
    for index in rng.choice(len(sequences), size=min(config.sequences, len(sequences)), replace=False):
        seq = sequences[int(index)]
        span = anchor_range(seq, depth)
        picked = rng.choice(len(span), size=min(config.anchors, len(span)), replace=False)
        batch.append((seq, torch.tensor(sorted(span[int(i)] for i in picked), dtype=torch.long)))
    return batch


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def save_checkpoint(path: Path, objective, optimizer, *, step: int, train_s: float, losses: list[float],
                    config: TrainConfig, model: str, sha: str) -> None:
    tensors = {f"param.{k}": v for k, v in objective.tensors().items()}
    for i, param in enumerate(objective.parameters()):
        state = optimizer.state.get(param, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                tensors[f"opt.{i}.{name}"] = state[name]
    info = {"step": step, "train_s": train_s, "losses": losses[-2000:], "config": config.key()}
    save_adapter(path, Adapter(kind=f"{config.kind}-checkpoint", model=model, model_sha256=sha,
                               hparams=objective.hparams, tensors=tensors, info=info))


def load_checkpoint(path: Path, objective, optimizer, config: TrainConfig, sha: str) -> tuple[int, float, list[float]]:
    """Restore a checkpoint written under the same config and model; returns (step, train_s, losses)."""
    ckpt = read_adapter(path)
    if ckpt.info.get("config") != config.key() or ckpt.model_sha256 != sha:
        raise QuickdraftError(f"checkpoint {path} is from a run with other settings or another model; "
                              f"delete it or pass --fresh to start over")
    objective.load_tensors({k[len("param."):]: v for k, v in ckpt.tensors.items() if k.startswith("param.")})
    step = int(ckpt.info["step"])
    for i, param in enumerate(objective.parameters()):
        if f"opt.{i}.exp_avg" in ckpt.tensors:
            optimizer.state[param] = {"step": torch.tensor(float(step)), "exp_avg": ckpt.tensors[f"opt.{i}.exp_avg"],
                                      "exp_avg_sq": ckpt.tensors[f"opt.{i}.exp_avg_sq"]}
    return step, float(ckpt.info["train_s"]), list(ckpt.info.get("losses", []))


def train(*, kind: str, model: str, out: str | Path, data: str = "builtin", steps: int = 400,
          minutes: float | None = None, dtype: str = "auto", threads: int | None = None, fresh: bool = False,
          checkpoint_every: int = 20,
          engine=None, progress: bool | None = None, data_cache: Path | None = None,
          on_step: Callable[[int], None] | None = None, **hparams) -> TrainReport:
    """Train an adapter and write it to ``out``; see the module docstring.

    minutes: stop after this much training time (the steps done so far count);
    fresh: ignore an existing checkpoint; engine: an already loaded engine
    (tests), else ``model`` is loaded with ``dtype``; data_cache: where the
    generated answers are cached (default: the model cache's ``train`` folder);
    on_step: called with the step count after every step (an exception it
    raises interrupts the run, which saves a checkpoint first).
    """
    from ..engine import load
    from ..paths import cache_dir

    config = TrainConfig(kind=kind, steps=steps, data=data, **hparams)
    if minutes is not None and minutes <= 0:
        raise QuickdraftError(f"minutes must be positive, got {minutes}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise QuickdraftError(f"the adapter file must end in .safetensors, got {out}")
    prompts = read_prompts(data)
    engine = engine or load(model, dtype=dtype, threads=threads)
    target = engine.target
    target.model.requires_grad_(False)
    sha = model_sha256(target)

    dataset = build_dataset(engine, prompts, model_sha256=sha, max_new_tokens=config.max_new_tokens,
                            cache=data_cache or cache_dir() / "train")
    extra = corpus_sequences(list(config.corpus), target.tokenizer)
    objective = make_objective(config, target.model, dataset.train, extra)
    trainable = [s for s in dataset.train + extra if len(anchor_range(s, objective.depth)) > 0]
    if not trainable:
        raise QuickdraftError("no training sequence is long enough; use longer answers (max-new-tokens)")
    optimizer = torch.optim.AdamW(objective.parameters(), lr=config.learning_rate, weight_decay=0.0)

    ckpt = checkpoint_path(out)
    start, (step, train_s, losses) = _restore(config, objective, optimizer, ckpt, fresh=fresh, sha=sha,
                                              name=target.name)
    resumed_from = step
    log.info("training %s on %d sequences (%d tokens), %d held out; %d parameters",
             kind, len(trainable), dataset.tokens + sum(len(s.ids) for s in extra), len(dataset.held_out),
             sum(p.numel() for p in objective.parameters()))

    step, train_s = _optimize(config, objective, optimizer, trainable, step=step, train_s=train_s, losses=losses,
                              deadline=None if minutes is None else minutes * 60.0, progress=progress,
                              save=lambda step, train_s: save_checkpoint(
                                  ckpt, objective, optimizer, step=step, train_s=train_s, losses=losses, config=config,
                                  model=target.name, sha=sha),
                              checkpoint_every=checkpoint_every, on_step=on_step)

    accuracy = evaluate(objective, dataset.held_out)
    window = max(1, min(20, len(losses) // 4))
    report = TrainReport(out=out, steps=step, train_s=train_s, first_loss=float(np.mean(losses[:window])),
                         last_loss=float(np.mean(losses[-window:])), accuracy=accuracy,
                         resumed_from=resumed_from, losses=losses)
    info = {"steps": step, "train_minutes": round(train_s / 60, 2), "data": data, "config": json.loads(config.key()),
            "train_sequences": len(trainable), "train_tokens": dataset.tokens + sum(len(s.ids) for s in extra),
            "held_out_sequences": len(dataset.held_out), "loss_first": round(report.first_loss, 4),
            "loss_last": round(report.last_loss, 4), "held_out_accuracy": accuracy.to_dict(),
            "dtype": str(target.dtype).replace("torch.", "")}
    if start is not None:
        info["init"] = {"path": config.init, **{k: start.info[k] for k in ("steps", "train_minutes", "config", "init")
                                                if k in start.info}}
    save_adapter(out, Adapter(kind=kind, model=target.name, model_sha256=sha, hparams=objective.hparams,
                              tensors={k: _stored(kind, v) for k, v in objective.tensors().items()}, info=info))
    ckpt.unlink(missing_ok=True)
    return report


def _restore(config: TrainConfig, objective, optimizer, ckpt: Path, *, fresh: bool, sha: str,
             name: str) -> tuple[Adapter | None, tuple[int, float, list[float]]]:
    """The ``--init`` adapter (checked against the run), and where training starts: a checkpoint's step,
    time and losses (unless ``fresh``), else the init adapter's weights, else nothing."""
    start = None
    if config.init is not None:
        start = read_adapter(config.init)
        if start.kind != config.kind or start.model_sha256 != sha or start.hparams != objective.hparams:
            raise QuickdraftError(f"--init {config.init}: a {start.kind} adapter for {start.model} with "
                                  f"{start.hparams}, not a {config.kind} adapter for {name} with {objective.hparams}")
    if ckpt.is_file() and not fresh:
        state = load_checkpoint(ckpt, objective, optimizer, config, sha)
        log.info("resuming from %s at step %d", ckpt, state[0])
        return start, state
    if start is not None:
        objective.load_tensors({k: v.float() for k, v in start.tensors.items()})
        log.info("starting from %s", config.init)
    return start, (0, 0.0, [])


def _optimize(config: TrainConfig, objective, optimizer, trainable, *, step: int, train_s: float,
              losses: list[float], deadline: float | None, progress: bool | None,
              save: Callable[[int, float], None], checkpoint_every: int,
              on_step: Callable[[int], None] | None) -> tuple[int, float]:
    """The optimizer steps (appending to ``losses``), a checkpoint every ``checkpoint_every`` steps and at the
    end, however the loop ends; returns the step count and the training seconds."""
    bar = _Progress(total=config.steps, start=step, enabled=progress)
    last_save = step
    try:
        while step < config.steps and (deadline is None or train_s < deadline):
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            loss = objective.loss(sample_batch(config, trainable, objective.depth, step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            train_s += time.perf_counter() - t0
            losses.append(float(loss.detach()))
            bar.update(step, losses, train_s)
            if step - last_save >= checkpoint_every:
                save(step, train_s)
                last_save = step
            if on_step is not None:
                on_step(step)
    finally:
        bar.close()
        if step > last_save:
            save(step, train_s)
    return step, train_s


def _stored(kind: str, tensor: torch.Tensor) -> torch.Tensor:
    """As the adapter file keeps it: ppd's few embeddings in float32, other kinds' weights in float16, ids as they are."""
    if not tensor.is_floating_point():
        return tensor
    return tensor.to(torch.float32 if kind == "ppd" else torch.float16)


class _Progress:
    """A rich progress bar on a terminal; periodic log lines elsewhere (a log file)."""

    def __init__(self, *, total: int, start: int, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.last_log = time.perf_counter()
        self.bar = None
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[status]}"), transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, status="")
            self.bar.start()
        self.total = total

    def update(self, step: int, losses: list[float], train_s: float) -> None:
        recent = float(np.mean(losses[-20:]))
        if self.bar is not None:
            self.bar.update(self.task, completed=step, status=f"loss {recent:.3f}")
        elif time.perf_counter() - self.last_log > 30 or step == self.total:
            log.info("step %d/%d  loss %.4f  %.1f min", step, self.total, recent, train_s / 60)
            self.last_log = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()





def untrained_adapter(target, kind: str, *, seed: int = 0, **hparams) -> Adapter:
    """A randomly initialised adapter for ``target`` (tests: losslessness does not depend on training)."""
    config = TrainConfig(kind=kind, seed=seed, **hparams)
    objective = make_objective(config, target.model)
    if kind == "heads":  # untrained heads copy the next-token guess; perturb them so they differ
        with torch.no_grad():
            objective.heads.up.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
    return Adapter(kind=kind, model=target.name, model_sha256=model_sha256(target), hparams=objective.hparams,
                   tensors=objective.tensors(), info={"untrained": True})
__all__ = ["KINDS", "TrainConfig", "TrainReport", "train", "untrained_adapter"]
