"""llama.cpp through llama-cpp-python's low-level API: a loaded GGUF model and a context over it (its KV
cache and a batch buffer), with llama.cpp's log lines kept for one-line errors. The targets built on it:
:mod:`.llamacpp` (one request), :mod:`.llamacpp_batch` (requests together), :mod:`.llamacpp_lm` (drafting)."""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import QuickdraftError

DEFAULT_CONTEXT = 8192  # tokens of context (KV cells) unless the model was trained on fewer
MAX_LEAVES = 128  # sequences a pass may use: leaves of the widest tree verified at once


def available() -> bool:
    """Whether llama-cpp-python is installed (importable)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _lib():
    try:
        import llama_cpp
    except ImportError as exc:  # a broken build, say
        raise QuickdraftError(
            f"the llama.cpp backend needs llama-cpp-python ({exc}); `make setup` builds it, or "
            "pip install llama-cpp-python"
        ) from exc
    return llama_cpp


class _Log:
    """llama.cpp's log lines, kept (the last few) instead of printed: an error names what llama.cpp said."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=20)
        self.callback = None

    def install(self, lib) -> None:
        if self.callback is None:
            def record(level, text, _user):
                line = (text or b"").decode("utf-8", "replace").strip()
                if line:
                    self.lines.append(line)
            self.callback = lib.llama_log_callback(record)  # kept alive here: llama.cpp holds the pointer
            lib.llama_log_set(self.callback, ctypes.c_void_p(0))
            lib.llama_backend_init()

    def errors(self) -> str:
        picked = [line for line in self.lines if "error" in line.lower() or "unknown" in line.lower()]
        return (picked or list(self.lines) or ["no reason given"])[-1]


_LOG = _Log()  # one per process: llama.cpp's logger is process-wide


class LlamaContext:
    """A loaded GGUF model and one llama.cpp context over it (its KV cache, a batch buffer)."""

    def __init__(self, path: Path, *, n_ctx: int | None = None, threads: int | None = None,
                 n_batch: int = 512, max_leaves: int = MAX_LEAVES, unified: bool = True) -> None:
        lib = self.lib = _lib()
        _LOG.install(lib)
        _LOG.lines.clear()
        params = lib.llama_model_default_params()
        self.model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise QuickdraftError(f"llama.cpp could not load {path}: {_LOG.errors()}")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        trained = int(lib.llama_model_n_ctx_train(self.model)) or DEFAULT_CONTEXT
        self.threads = int(threads or os.cpu_count() or 1)
        cp = lib.llama_context_default_params()
        cp.n_ctx = int(n_ctx or min(trained, DEFAULT_CONTEXT))
        cp.n_batch = cp.n_ubatch = int(n_batch)
        cp.n_seq_max = int(max_leaves)
        # unified: one KV buffer, so a tree's shared prefix is in every sequence without copies; else one
        # buffer (stream) per sequence, n_ctx / max_leaves cells each, for requests batched together
        cp.kv_unified = bool(unified)
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED  # with it, chains differ from plain decoding (docs)
        cp.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, cp)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise QuickdraftError(f"llama.cpp could not create a context for {path}: {_LOG.errors()}")
        self.n_ctx = int(lib.llama_n_ctx(self.ctx))
        self.n_batch = int(n_batch)
        self.max_leaves = int(max_leaves)
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(self.n_batch, 0, self.max_leaves)
        self.lock = threading.Lock()  # one pass at a time on this context
        # llama.cpp's memory is freed when this object goes (or at exit); close() frees it at once
        self._free = weakref.finalize(self, _free_context, lib, self.batch, self.ctx, self.model)

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(512)
        n = self.lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def decode(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[Sequence[int]],
               outputs: Sequence[bool]) -> np.ndarray:
        """One pass (split into ``n_batch`` chunks when longer): logits [rows with outputs, V] float32."""
        lib, batch = self.lib, self.batch
        out: list[np.ndarray] = []
        with self.lock:
            for start in range(0, len(tokens), self.n_batch):
                end = min(start + self.n_batch, len(tokens))
                batch.n_tokens = end - start
                for row in range(start, end):
                    i = row - start
                    batch.token[i] = int(tokens[row])
                    batch.pos[i] = int(positions[row])
                    batch.n_seq_id[i] = len(seqs[row])
                    for j, seq in enumerate(seqs[row]):
                        batch.seq_id[i][j] = seq
                    batch.logits[i] = bool(outputs[row])
                code = lib.llama_decode(self.ctx, batch)
                if code != 0:
                    raise QuickdraftError(f"llama.cpp could not decode a pass of {end - start} tokens "
                                          f"(code {code}: {_LOG.errors()})")
                wanted = sum(bool(o) for o in outputs[start:end])
                if wanted:
                    view = np.ctypeslib.as_array(lib.llama_get_logits(self.ctx), shape=(wanted * self.n_vocab,))
                    out.append(view.reshape(wanted, self.n_vocab).copy())
        if not out:
            return np.zeros((0, self.n_vocab), dtype=np.float32)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> None:
        if not self.lib.llama_memory_seq_rm(self.memory, seq, p0, p1):
            raise QuickdraftError(f"llama.cpp could not drop positions {p0}..{p1} of sequence {seq}")

    def seq_cp(self, src: int, dst: int) -> None:
        self.lib.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        """Free the model, context and batch now (later use of this object is an error of the caller)."""
        self._free()


def _free_context(lib, batch, ctx, model) -> None:
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)


def check_key(target) -> dict:
    """What a check on a llama.cpp target depends on: the file, the build, its kernels, threads and the CPU."""
    from ..models import fingerprint
    from ..profile import machine_name

    lib = target.context.lib
    return {"file": fingerprint(target.path), "llama_cpp": getattr(lib, "__version__", "?"),
            "kernels": target.kernels, "threads": target.threads, "machine": machine_name("cpu")}


__all__ = ["DEFAULT_CONTEXT", "MAX_LEAVES", "LlamaContext", "available", "check_key"]
