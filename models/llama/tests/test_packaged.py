"""Models known by name: a missing package is one line saying what to install; a chunked GGUF is
joined once, checked, and never left half-written under its final name."""

from __future__ import annotations

import hashlib
import sys
import types

import pytest

from models.common.errors import UserError
from models.llama import packaged


def fake_package(tmp_path, monkeypatch, parts: list[bytes], sha: str | None = None):
    chunks = []
    for i, data in enumerate(parts):
        chunk = tmp_path / f"model.gguf.part{i:02d}"
        chunk.write_bytes(data)
        chunks.append(chunk)
    module = types.ModuleType("fake_chunked_gguf")
    module.MODEL_NAME = "fake.gguf"
    module.EXPECTED_SHA256 = sha or hashlib.sha256(b"".join(parts)).hexdigest()
    module.chunk_paths = lambda: chunks
    monkeypatch.setitem(sys.modules, "fake_chunked_gguf", module)
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path / "cache"))
    return module


def test_chunks_are_joined_once_and_checked(tmp_path, monkeypatch):
    module = fake_package(tmp_path, monkeypatch, [b"GGUF", b"-body-", b"end"])
    path = packaged._joined("fake", module)
    assert path.read_bytes() == b"GGUF-body-end" and path.name == "fake.gguf"
    module.chunk_paths = lambda: pytest.fail("joined again")
    assert packaged._joined("fake", module) == path


def test_a_bad_sha_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "fake", packaged.PackagedModel("fake_chunked_gguf", "reinstall it"))
    module = fake_package(tmp_path, monkeypatch, [b"GGUF", b"x"], sha="0" * 64)
    with pytest.raises(UserError, match="sha256 .* is not the package's"):
        packaged._joined("fake", module)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "absent", packaged.PackagedModel("no_such_package_xyz", "pip x"))
    assert not packaged.installed("absent")
    with pytest.raises(UserError, match="model absent needs the package no-such-package-xyz: pip x"):
        packaged.gguf_path("absent")
