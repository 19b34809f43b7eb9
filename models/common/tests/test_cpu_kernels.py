"""The CPU kernels: right answers, and the same bits whatever the number of rows."""

import pytest
import torch
import torch.nn.functional as F

from models.common.cpu_kernels import skinny_kernels

kernels = skinny_kernels()
pytestmark = pytest.mark.skipif(kernels is None, reason="CPU kernels unavailable (no AVX2/FMA or no compiler)")


@pytest.mark.parametrize("n, k", [(960, 576), (49, 1536), (130, 100)])
def test_skinny_linear_matches_torch_and_is_batch_invariant(n, k):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=gen)
    x = torch.randn(9, k, generator=gen)
    full = kernels.skinny_linear(x, w)
    torch.testing.assert_close(full, x @ w.t(), atol=1e-4, rtol=1e-4)
    for rows in [slice(0, 1), slice(2, 3), slice(3, 8)]:
        assert torch.equal(kernels.skinny_linear(x[rows], w), full[rows])


def test_attend_matches_sdpa_with_gqa_and_mask_and_is_batch_invariant():
    gen = torch.Generator().manual_seed(1)
    T, H, Hkv, D, S, start = 5, 6, 2, 16, 40, 20
    q = torch.randn(T, H, D, generator=gen)
    k = torch.randn(Hkv, S, D, generator=gen)
    v = torch.randn(Hkv, S, D, generator=gen)
    kv_len = start + T
    mask = torch.arange(kv_len)[None, :] <= (start + torch.arange(T))[:, None]
    got = kernels.attend(q, k, v, mask, kv_len, D**-0.5)
    ref = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k[None, :, :kv_len], v[None, :, :kv_len], attn_mask=mask, enable_gqa=True
    )[0].transpose(0, 1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # row t alone, attending to exactly its visible prefix, gives the same bits
    empty = torch.empty(0, dtype=torch.bool)
    for t in range(T):
        alone = kernels.attend(q[t : t + 1], k, v, empty, start + t + 1, D**-0.5)
        assert torch.equal(alone[0], got[t])
