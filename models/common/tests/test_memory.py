import pytest
import torch

from models.common import memory
from models.common.errors import UserError


def test_a_cache_past_available_memory_is_one_line_with_what_fits(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10 * memory.GIB)
    memory.check_kv_caches_fit(1024, 1000, 1, torch.device("cpu"), "the target's")  # 1 MB: fine
    with pytest.raises(UserError) as err:
        memory.check_kv_caches_fit(1024, 100_000_000, 2, torch.device("cpu"), "the target's")
    message = str(err.value)
    assert "needs 190.7 GiB of KV cache (the target's), but cpu has 10.0 GiB available" in message
    assert "at most --max_seq_len 4718592 fits" in message and "\n" not in message
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown: not refused
    memory.check_kv_caches_fit(1024, 100_000_000, 2, torch.device("cpu"), "the target's")
