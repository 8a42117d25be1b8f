import platform
from types import SimpleNamespace

import pytest

from quickdraft import memory


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(memory, "_applied", None)


def test_applied_once_on_glibc(fresh, monkeypatch):
    calls = []

    def mallopt(param, value):
        calls.append((param, value))
        return 1

    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: SimpleNamespace(mallopt=mallopt))
    monkeypatch.setattr(memory.platform, "system", lambda: "Linux")
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert memory.keep_freed_memory() is True
    assert memory.keep_freed_memory() is True  # once per process
    assert calls == [(memory.M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD), (memory.M_TRIM_THRESHOLD, memory.TRIM_THRESHOLD)]


def test_refused_setting_reports_false(fresh, monkeypatch):
    def mallopt(param, value):
        return 0

    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: SimpleNamespace(mallopt=mallopt))
    monkeypatch.setattr(memory.platform, "system", lambda: "Linux")
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert memory.keep_freed_memory() is False


def test_off_by_environment_or_elsewhere(fresh, monkeypatch):
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: pytest.fail("must not touch the C library"))
    monkeypatch.setenv("QUICKDRAFT_KEEP_MEMORY", "0")
    assert memory.keep_freed_memory() is False
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.delenv("QUICKDRAFT_KEEP_MEMORY")
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("", ""))  # musl, macOS: not glibc
    assert memory.keep_freed_memory() is False


def test_real_c_library(fresh):
    # glibc accepts the settings; elsewhere (musl, macOS) nothing is called and it reports False
    assert memory.keep_freed_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
