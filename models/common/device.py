"""Devices: CPU (fp32, eager) by default, CUDA (bf16, traced) when asked and present.

Tenstorrent (ttnn) and Qualcomm Cloud AI (QEfficient) backends cannot run on these machines;
asking for them is refused with a clear message instead of silently running on the CPU.
"""

from __future__ import annotations

import dataclasses
import os
import re

import torch

from models.common.errors import UserError

SHAPE = re.compile(r"^(\d+)x(\d+)$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# tt-metal's MESH_DEVICE names and Qualcomm's: real backends, not available here.
UNAVAILABLE_BACKENDS = {
    "ttnn": "Tenstorrent ttnn",
    "n150": "Tenstorrent ttnn",
    "n300": "Tenstorrent ttnn",
    "t3k": "Tenstorrent ttnn",
    "tg": "Tenstorrent ttnn",
    "p150": "Tenstorrent ttnn",
    "qaic": "Qualcomm QEfficient",
    "qefficient": "Qualcomm QEfficient",
}


class DeviceUnavailable(UserError):
    """A real device kind that this machine lacks (tests skip on it, scripts refuse it)."""


@dataclasses.dataclass(frozen=True)
class Device:
    torch_device: torch.device
    dtype: torch.dtype
    traced: bool  # CUDA graphs per shape; False means the same interface runs eagerly
    mesh: str = "1x1"  # DPxTP mesh devices of this kind (cpu:1x2, cuda:1x4); runs start a worker each
    weights: str = "fp32"  # fp32 (the dtype's) or gguf: the GGUF's own blocks where a model has them

    @property
    def type(self) -> str:
        return self.torch_device.type

    @property
    def sku(self) -> str:
        """The key perf targets and goldens are filed under: cpu, or the card (H100, H200, A100)."""
        if self.type != "cuda":
            return self.type
        name = torch.cuda.get_device_name(self.torch_device).removeprefix("NVIDIA ").strip()
        return name.split()[0] if name else "cuda"

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.torch_device) if self.type == "cuda" else "cpu"
        mesh = "" if self.mesh == "1x1" else f", mesh {self.mesh}"
        weights = "" if self.weights == "fp32" else f", {self.weights} weights"
        return (f"{name} ({str(self.dtype).removeprefix('torch.')}, {'traced' if self.traced else 'eager'}{mesh}"
                f"{weights})")


def requested_device_name(cli_value: str | None, default: str | None = None) -> str:
    """--device wins, then $MESH_DEVICE, then the caller's default, then cpu."""
    return (cli_value or os.environ.get("MESH_DEVICE") or default or "cpu").strip()


def split_mesh(name: str) -> tuple[str, str]:
    """"cpu:1x2" -> ("cpu", "1x2"); a plain device is a 1x1 mesh ("cuda:1" is a GPU index)."""
    m = re.match(r"^(cpu|cuda):(\d+x\d+)$", name.strip().lower())
    return (m.group(1), m.group(2)) if m else (name, "1x1")


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """A DPxTP mesh of one device kind: part of a device's name (cpu:1x2), so it lives here;
    models.common.mesh runs the workers of one."""

    dp: int  # data-parallel submeshes (each decodes its share of the prompts)
    tp: int  # devices per submesh (the model's tensor-parallel shards)

    @classmethod
    def parse(cls, text: str) -> MeshShape:
        m = SHAPE.match(text.strip().lower())
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise UserError(f"mesh shape {text!r} is not DPxTP with positive sizes (e.g. 1x2, 2x1, 2x2)")
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def of(cls, device: str, mesh_shape: str | None) -> MeshShape:
        """The mesh a device name (cpu:1x2) and a --mesh_shape ask for together; both naming
        different meshes is a usage error."""
        of_device = cls.parse(split_mesh(device)[1])
        if mesh_shape is None:
            return of_device
        shape = cls.parse(mesh_shape)
        if of_device.size > 1 and of_device != shape:
            raise UserError(f"--mesh_shape {mesh_shape} and device {device!r} name two meshes; give one")
        return shape

    @property
    def size(self) -> int:
        return self.dp * self.tp

    def __str__(self) -> str:
        return f"{self.dp}x{self.tp}"


def open_device(name: str, dtype: str | None = None, traced: bool | None = None, weights: str = "fp32") -> Device:
    """name: cpu, cuda[:N], or cpu:DPxTP / cuda:DPxTP for a mesh of them. weights: gguf reads
    GGUF blocks with the CPU kernels, so only on the CPU in fp32."""
    name, mesh = split_mesh(name)
    mesh = str(MeshShape.parse(mesh))
    key = name.lower()
    if key in UNAVAILABLE_BACKENDS:
        raise DeviceUnavailable(
            f"device {name!r} needs the {UNAVAILABLE_BACKENDS[key]} backend, which is not available here; "
            "use --device cpu or --device cuda"
        )
    if key != "cpu" and not key.startswith("cuda"):
        raise UserError(f"unknown device {name!r}; expected cpu or cuda[:N]")
    if key.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {name!r} requested but this machine has no CUDA GPU; use --device cpu")
    torch_device = torch.device(key)
    if dtype is None:
        dtype = "float32" if torch_device.type == "cpu" else "bfloat16"
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if traced is None:
        traced = torch_device.type == "cuda"
    return with_weights(Device(torch_device, DTYPES[dtype], traced and torch_device.type == "cuda", mesh), weights)


def with_weights(device: Device, weights: str) -> Device:
    """The device reading weights in this format: gguf only on the CPU in float32 (the CPU kernels
    read the blocks)."""
    if weights == "gguf" and (device.type != "cpu" or device.dtype != torch.float32):
        raise UserError(f"--weights gguf runs on the CPU in float32 (the CPU kernels read the blocks), not "
                        f"{device.type} {str(device.dtype).removeprefix('torch.')}; use --weights fp32")
    return dataclasses.replace(device, weights=weights)
