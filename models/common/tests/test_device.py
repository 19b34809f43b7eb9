import pytest
import torch

from models.common.device import DeviceUnavailable, open_device, requested_device_name
from models.common.errors import UserError


def test_cpu_defaults_to_fp32_eager():
    d = open_device("cpu")
    assert d.torch_device.type == "cpu" and d.dtype == torch.float32 and not d.traced


@pytest.mark.parametrize("name", ["n150", "T3K", "ttnn", "qaic"])
def test_unavailable_backends_say_so(name):
    with pytest.raises(DeviceUnavailable, match="not available here"):
        open_device(name)


def test_cuda_without_a_gpu_is_unavailable_not_silently_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceUnavailable, match="no CUDA GPU"):
        open_device("cuda")


def test_unknown_device_and_dtype():
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        open_device("tpu")
    with pytest.raises(UserError, match="unknown dtype 'int4'"):
        open_device("cpu", "int4")


def test_device_name_precedence(monkeypatch):
    monkeypatch.delenv("MESH_DEVICE", raising=False)
    assert requested_device_name(None) == "cpu"
    assert requested_device_name(None, default="cuda") == "cuda"
    monkeypatch.setenv("MESH_DEVICE", "N150")
    assert requested_device_name(None, default="cuda") == "N150"
    assert requested_device_name("cpu") == "cpu"
