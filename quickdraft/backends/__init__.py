"""Backends: what runs the target model. Each registers itself here; the engine drives any of them
through the same small interface (see :class:`Target`).

* ``transformers``: :class:`quickdraft.models.TargetModel` (a GGUF file is dequantized once; every
  method runs, on CPU or GPU);
* ``llamacpp``: :class:`quickdraft.backends.llamacpp.LlamaCppTarget` (a GGUF file as shipped, on
  llama.cpp's CPU kernels; methods that need only logits).

``auto`` picks llama.cpp for a GGUF file or alias on the CPU when llama-cpp-python is installed,
transformers otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from ..errors import QuickdraftError

#: What a backend can give a drafter: logits (every backend), the final hidden states, the model's
#: layers (self-speculation) and its input embeddings (prompt tokens fed as embeddings).
CAPABILITIES = ("logits", "hidden", "layers", "embeddings")


class Target(Protocol):
    """The target-model interface the engine, drafters, profile and bench use.

    name, tokenizer (a Hugging Face tokenizer), tokenizer_lock, vocab_size, max_context, eos_ids,
    exact (greedy output promised equal to plain decoding here), backend, capabilities, dtype, device.
    """

    backend: str
    capabilities: frozenset[str]
    name: str
    vocab_size: int
    max_context: int
    eos_ids: frozenset[int]

    @property
    def exact(self) -> bool: ...

    def new_cache(self) -> Any: ...

    def prefill(self, tokens: list[int], cache: Any, *, hidden: bool = False) -> Any: ...

    def forward(self, tokens: list[int], cache: Any, parents: tuple[int, ...] | None = None) -> Any: ...

    def forward_full(self, tokens: list[int], cache: Any, parents: tuple[int, ...] | None = None, *,
                     extra_embeds=None, extra_parents=None, hidden: bool = False) -> Any: ...


@dataclass(frozen=True)
class BackendSpec:
    name: str
    description: str
    capabilities: frozenset[str]
    available: Callable[[], bool]
    load: Callable[..., Any]  # (spec, *, dtype, device, threads) -> Target
    gguf_only: bool = False  # runs GGUF files (and aliases) only
    cpu_only: bool = False


_BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> None:
    if spec.name in _BACKENDS:
        raise ValueError(f"backend {spec.name!r} registered twice")
    _BACKENDS[spec.name] = spec


def backends() -> list[BackendSpec]:
    return list(_BACKENDS.values())


def get_backend(name: str) -> BackendSpec:
    if name not in _BACKENDS:
        raise QuickdraftError(f"unknown backend {name!r}; available: auto, {', '.join(_BACKENDS)}")
    return _BACKENDS[name]


def installed() -> list[str]:
    """The backends whose libraries are installed here."""
    return [spec.name for spec in _BACKENDS.values() if spec.available()]


def choose_backend(model: str, backend: str = "auto", *, device: str = "cpu", dtype: str | None = "auto") -> str:
    """The backend to run ``model`` on: ``backend`` itself (checked), or for ``auto`` llama.cpp for a GGUF
    file or alias on the CPU when it is installed and no dtype is asked for (a dtype is a transformers
    setting), else transformers."""
    from ..models import is_gguf_spec

    import torch

    on_cpu = torch.device(device).type == "cpu"
    if backend == "auto":
        llama = _BACKENDS.get("llamacpp")
        if on_cpu and dtype in (None, "auto") and llama is not None and llama.available() and is_gguf_spec(model):
            return "llamacpp"
        return "transformers"
    spec = get_backend(backend)
    if not spec.available():
        raise QuickdraftError(f"the {backend} backend is not installed here (installed: {', '.join(installed())})")
    if spec.cpu_only and not on_cpu:
        raise QuickdraftError(f"the {backend} backend runs on the CPU only (asked for {device}); "
                              "use --backend transformers")
    if spec.gguf_only and not is_gguf_spec(model):
        raise QuickdraftError(f"the {backend} backend runs GGUF files and aliases; {model!r} is neither")
    return backend


def load_target(model: str, *, backend: str = "auto", dtype: str = "auto", device: str = "cpu",
                threads: int | None = None) -> Any:
    """Load ``model`` on a backend (see :func:`choose_backend`)."""
    name = choose_backend(model, backend, device=device, dtype=dtype)
    return _BACKENDS[name].load(model, dtype=dtype, device=device, threads=threads)


def check_capabilities(method: str, needs: Sequence[str], target: Any) -> None:
    """Fail with one line when ``target``'s backend lacks what a method needs."""
    has = getattr(target, "capabilities", None)
    if has is None:  # a test double without the attribute: the transformers interface
        return
    missing = [need for need in needs if need not in has]
    if missing:
        backend = getattr(target, "backend", "this backend")
        raise QuickdraftError(
            f"method {method!r} needs the model's {' and '.join(_NEEDS[m] for m in missing)}, which the {backend} "
            f"backend does not give; run it with --backend transformers (`quickdraft methods` lists what runs where)")


_NEEDS = {"logits": "logits", "hidden": "hidden states", "layers": "layers", "embeddings": "input embeddings"}


def _load_transformers(model: str, *, dtype: str, device: str, threads: int | None):
    from ..models import load_model

    return load_model(model, dtype=dtype, device=device)


def _load_llamacpp(model: str, *, dtype: str, device: str, threads: int | None):
    from ..models import gguf_path
    from . import llamacpp

    if dtype not in ("auto", None):
        raise QuickdraftError(f"--dtype {dtype} is a transformers setting; llama.cpp runs the GGUF file's own "
                              "quantization (drop --dtype, or use --backend transformers)")
    path = gguf_path(model)
    if path is None:
        raise QuickdraftError(f"the llamacpp backend runs GGUF files and aliases; {model!r} is neither")
    name = model if not model.endswith(".gguf") else path.name
    return llamacpp.load(path, name=name, threads=threads)


def _llamacpp_available() -> bool:
    from .llamacpp import available

    return available()


register_backend(BackendSpec(
    name="transformers", description="transformers (PyTorch): every method; GGUF dequantized once; CPU or GPU",
    capabilities=frozenset(CAPABILITIES), available=lambda: True, load=_load_transformers,
))
register_backend(BackendSpec(
    name="llamacpp", description="llama.cpp (llama-cpp-python): GGUF as shipped, on llama.cpp's CPU kernels",
    capabilities=frozenset({"logits"}), available=_llamacpp_available, load=_load_llamacpp,
    gguf_only=True, cpu_only=True,
))

__all__ = ["BackendSpec", "CAPABILITIES", "Target", "backends", "check_capabilities", "choose_backend",
           "get_backend", "installed", "load_target", "register_backend"]
