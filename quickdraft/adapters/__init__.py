"""Trained drafter weights ("adapters"): safetensors files that name the model they fit.

An adapter file holds a drafter's few trained tensors (PPD's prompt-token
embeddings, Medusa-style heads, an EAGLE-style layer) plus string metadata:

* ``quickdraft.kind``: ``ppd``, ``heads`` or ``eagle``;
* ``quickdraft.model`` and ``quickdraft.model_sha256``: the model it was trained
  for, by display name and by the SHA-256 of the model's source file (the GGUF
  file; for a Hugging Face directory, its config and weights);
* ``quickdraft.hparams``: JSON, what the drafter needs to rebuild its modules;
* ``quickdraft.info``: JSON, how it was trained and its held-out accuracy.

Only safetensors is read or written, never pickle. Loading an adapter for a
different model is a :class:`~quickdraft.errors.QuickdraftError`: its guesses
would be useless (still lossless, since the target verifies every token).

Adapters for the embedded model ship in this directory, named
``{kind}-{model alias}.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import QuickdraftError

FORMAT = "1"
SHIPPED = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Adapter:
    """An adapter's tensors and what they were trained for."""

    kind: str
    model: str
    model_sha256: str
    hparams: dict
    tensors: dict[str, torch.Tensor] = field(repr=False)
    info: dict = field(default_factory=dict)


def save_adapter(path: str | Path, adapter: Adapter) -> None:
    """Write an adapter atomically (a crash never leaves half a file)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "quickdraft.format": FORMAT,
        "quickdraft.kind": adapter.kind,
        "quickdraft.model": adapter.model,
        "quickdraft.model_sha256": adapter.model_sha256,
        "quickdraft.hparams": json.dumps(adapter.hparams, sort_keys=True),
        "quickdraft.info": json.dumps(adapter.info, sort_keys=True),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter.tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; an adapter is ordinary data
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_adapter(path: str | Path) -> Adapter:
    """Read an adapter file; a missing, corrupt or foreign file is a QuickdraftError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise QuickdraftError(f"adapter file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise QuickdraftError(f"{path} is not a safetensors adapter file ({type(exc).__name__}: {exc})") from exc
    if metadata.get("quickdraft.format") != FORMAT or "quickdraft.kind" not in metadata:
        raise QuickdraftError(f"{path} is not a quickdraft adapter (no quickdraft metadata)")
    try:
        hparams = json.loads(metadata["quickdraft.hparams"])
        info = json.loads(metadata.get("quickdraft.info", "{}"))
        return Adapter(kind=metadata["quickdraft.kind"], model=metadata["quickdraft.model"],
                       model_sha256=metadata["quickdraft.model_sha256"], hparams=hparams, tensors=tensors, info=info)
    except (KeyError, json.JSONDecodeError) as exc:
        raise QuickdraftError(f"{path} has broken quickdraft metadata ({exc})") from exc


def default_adapter_path(kind: str, model_name: str) -> Path:
    return SHIPPED / f"{kind}-{model_name}.safetensors"


def load_adapter_for(target, kind: str, path: str | Path | None = None) -> Adapter:
    """The adapter of ``kind`` for ``target``: from ``path``, else the shipped one; checked against the model."""
    if path is None:
        path = default_adapter_path(kind, target.name)
        if not path.is_file():
            raise QuickdraftError(
                f"no shipped {kind} adapter for model {target.name}; train one with "
                f"`quickdraft train --kind {kind} --model MODEL --out ADAPTER` and pass --adapter ADAPTER"
            )
    adapter = read_adapter(path)
    if adapter.kind != kind:
        raise QuickdraftError(f"adapter {path} is a {adapter.kind!r} adapter, not {kind!r}")
    sha = model_sha256(target)
    if adapter.model_sha256 != sha:
        raise QuickdraftError(
            f"adapter {path} was trained for model {adapter.model} (sha256 {adapter.model_sha256[:12]}), "
            f"not {target.name} (sha256 {sha[:12]})"
        )
    return adapter


def model_sha256(target) -> str:
    """SHA-256 identifying a loaded model's weights (see the module docstring).

    A converted GGUF model's directory records its source file's hash in
    ``quickdraft.json``; any other directory is hashed (config and safetensors).
    """
    source = Path(getattr(target.model, "name_or_path", "") or "")
    if not source.is_dir():
        raise QuickdraftError(f"cannot identify the weights of model {target.name} (no local model directory)")
    record = source / "quickdraft.json"
    if record.is_file():
        try:
            return str(json.loads(record.read_text())["sha256"])
        except (KeyError, ValueError) as exc:
            raise QuickdraftError(f"{record} is corrupt ({exc}); delete the cached model to convert it again") from exc
    return hash_model_dir(source)


def hash_model_dir(directory: Path) -> str:
    """SHA-256 over a Hugging Face model directory's config.json and *.safetensors files, in name order."""
    digest = hashlib.sha256()
    for path in [directory / "config.json", *sorted(directory.glob("*.safetensors"))]:
        if not path.is_file():
            continue
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()
