"""The CPU kernels: right answers, and the same bits whatever the number of rows; and their
build lock: a killed build's lock is taken over, a live build is waited for (not forever)."""

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.cpp_extension import is_ninja_available

from models.common.cpu_kernels import BATON, BUILD_LOCK, build_lock, skinny_kernels
from models.speculative.tree import ancestor_mask

kernels = skinny_kernels()
needs_kernels = pytest.mark.skipif(kernels is None, reason="CPU kernels unavailable (no AVX2/FMA or no compiler)")
REPO = Path(__file__).resolve().parents[3]

MAX_ROWS = 64  # models.common.ops.SKINNY_MAX_ROWS: a tree of 63 drafts + root in one verify pass


# Ragged shapes on purpose: N not a multiple of any tile width (3, 4, 6, 8) or of the weight
# block, K with a K % 8 tail or shorter than one vector, K large enough for several blocks.
@needs_kernels
@pytest.mark.parametrize("n, k", [(960, 576), (49, 1536), (130, 100), (7, 24), (1, 8), (25, 3), (1000, 13)])
def test_skinny_linear_matches_torch_and_is_batch_invariant(n, k):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=gen)
    x = torch.randn(MAX_ROWS, k, generator=gen)
    full = kernels.skinny_linear(x, w)
    torch.testing.assert_close(full, x @ w.t(), atol=1e-4, rtol=1e-4)
    # every row count takes its own mix of tile shapes; each row's bits must not change
    for m in range(1, MAX_ROWS + 1):
        assert torch.equal(kernels.skinny_linear(x[:m], w), full[:m]), f"first {m} rows"
    for a, b in [(1, 2), (2, 3), (3, 8), (5, 6), (7, 40), (13, 64), (30, 33), (31, 62), (62, 64), (63, 64)]:
        assert torch.equal(kernels.skinny_linear(x[a:b], w), full[a:b]), f"rows {a}:{b}"
    # a strided view of x is made contiguous first and gives the same bits
    wide = torch.zeros(MAX_ROWS, 2 * k)
    wide[:, :k] = x
    assert torch.equal(kernels.skinny_linear(wide[:9, :k], w), full[:9])


@needs_kernels
def test_skinny_linear_empty_and_single():
    w = torch.randn(5, 16)
    assert kernels.skinny_linear(torch.randn(0, 16), w).shape == (0, 5)
    x = torch.randn(1, 16)
    torch.testing.assert_close(kernels.skinny_linear(x, w), x @ w.t(), atol=1e-5, rtol=1e-5)


def _sdpa(q, k, v, mask, kv_len):
    return F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k[None, :, :kv_len], v[None, :, :kv_len], attn_mask=mask, enable_gqa=True
    )[0].transpose(0, 1)


@needs_kernels
def test_attend_matches_sdpa_with_gqa_and_mask_and_is_batch_invariant():
    gen = torch.Generator().manual_seed(1)
    T, H, Hkv, D, S, start = 5, 6, 2, 16, 40, 20
    q = torch.randn(T, H, D, generator=gen)
    k = torch.randn(Hkv, S, D, generator=gen)
    v = torch.randn(Hkv, S, D, generator=gen)
    kv_len = start + T
    mask = torch.arange(kv_len)[None, :] <= (start + torch.arange(T))[:, None]
    got = kernels.attend(q, k, v, mask, kv_len, D**-0.5)
    torch.testing.assert_close(got, _sdpa(q, k, v, mask, kv_len), atol=1e-5, rtol=1e-5)
    # row t alone, attending to exactly its visible prefix, gives the same bits
    empty = torch.empty(0, dtype=torch.bool)
    for t in range(T):
        alone = kernels.attend(q[t : t + 1], k, v, empty, start + t + 1, D**-0.5)
        assert torch.equal(alone[0], got[t])


@needs_kernels
@pytest.mark.parametrize(
    "T, H, Hkv, D, start",
    [(64, 9, 3, 64, 300), (33, 8, 2, 128, 100), (7, 4, 4, 8, 3), (12, 8, 1, 24, 37), (2, 9, 3, 64, 11)],
)
def test_attend_under_a_tree_mask_is_batch_invariant(T, H, Hkv, D, start):
    """A token tree verified in one pass: each node sees the prefix and its ancestors. Its
    output must equal the same node's attention computed alone (any T, any other rows)."""
    gen = torch.Generator().manual_seed(T)
    S = start + T + 5
    q = torch.randn(T, H, D, generator=gen)
    k = torch.randn(Hkv, S, D, generator=gen)
    v = torch.randn(Hkv, S, D, generator=gen)
    kv_len = start + T
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, T)]
    ancestors = ancestor_mask([p - 1 for p in parents[1:]])  # node 0 is the tree's root
    mask = torch.cat([torch.ones(T, start, dtype=torch.bool), ancestors], dim=1)
    got = kernels.attend(q, k, v, mask, kv_len, D**-0.5)
    torch.testing.assert_close(got, _sdpa(q, k, v, mask, kv_len), atol=1e-5, rtol=1e-5)
    for t in range(T):
        alone = kernels.attend(q[t : t + 1], k, v, mask[t : t + 1].contiguous(), kv_len, D**-0.5)
        assert torch.equal(alone[0], got[t]), f"row {t} alone"
        upto = start + t + 1  # the same visible slots, a shorter cache
        shorter = kernels.attend(q[t : t + 1], k, v, mask[t : t + 1, :upto].contiguous(), upto, D**-0.5)
        assert torch.equal(shorter[0], got[t]), f"row {t} with kv_len up to itself"
    for a in range(0, T, 3):
        b = min(T, a + 5)
        assert torch.equal(kernels.attend(q[a:b], k, v, mask[a:b].contiguous(), kv_len, D**-0.5), got[a:b])


@needs_kernels
@pytest.mark.parametrize("H, Hkv, D, start, T", [(9, 3, 64, 40, 14), (8, 2, 16, 13, 30), (4, 1, 8, 5, 9)])
def test_attend_tree_node_equals_its_chain(H, Hkv, D, start, T):
    """A tree node's ancestors sit at scattered slots; decoded as a chain the same keys and
    values sit at consecutive slots. Only the visible values in slot order may matter."""
    gen = torch.Generator().manual_seed(H * T)
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, T)]
    S = start + T + 3
    q = torch.randn(T, H, D, generator=gen)
    k = torch.randn(Hkv, S, D, generator=gen)
    v = torch.randn(Hkv, S, D, generator=gen)
    ancestors = ancestor_mask([p - 1 for p in parents[1:]])  # node 0 is the tree's root
    mask = torch.cat([torch.ones(T, start, dtype=torch.bool), ancestors], dim=1)
    tree = kernels.attend(q, k, v, mask, start + T, D**-0.5)
    empty = torch.empty(0, dtype=torch.bool)
    for node in range(T):
        path = [start + j for j in range(T) if ancestors[node, j]]
        k_chain, v_chain = k.clone(), v.clone()
        k_chain[:, start : start + len(path)] = k[:, path]
        v_chain[:, start : start + len(path)] = v[:, path]
        chain = kernels.attend(q[node : node + 1], k_chain, v_chain, empty, start + len(path), D**-0.5)
        assert torch.equal(chain[0], tree[node]), f"node {node}: tree != chain"


@needs_kernels
@pytest.mark.parametrize("H, Hkv, D", [(9, 3, 64), (4, 4, 8), (8, 1, 24)])
def test_attend_rows_gives_each_sequence_the_bits_it_gets_alone(H, Hkv, D):
    """A batch in one call: sequences of different lengths, one with a causal block, one with a
    masked (tree-like) block, one decode row; each equals `attend` on its own cache."""
    gen = torch.Generator().manual_seed(H * D)
    B, S = 4, 64
    k = torch.randn(B, Hkv, S, D, generator=gen)
    v = torch.randn(B, Hkv, S, D, generator=gen)
    blocks = [(2, 30, 3), (0, 9, 5), (3, 50, 1)]  # (cache row, tokens before, block length)
    q = torch.randn(sum(n for *_, n in blocks), H, D, generator=gen)
    width = max(start + n for _, start, n in blocks)
    mask = torch.zeros(len(q), width, dtype=torch.bool)
    rows, lens, alone, t = [], [], [], 0
    for b, start, n in blocks:
        kv_len = start + n
        m = torch.arange(kv_len)[None, :] <= (start + torch.arange(n))[:, None]
        if n == 5:  # a tree: node 3 does not see node 2
            m[3, start + 2] = False
        mask[t : t + n, :kv_len] = m
        rows += [b] * n
        lens += [kv_len] * n
        alone.append(kernels.attend(q[t : t + n], k[b], v[b], m.contiguous(), kv_len, D**-0.5))
        t += n
    got = kernels.attend_rows(q, k, v, torch.tensor(rows), torch.tensor(lens), mask, D**-0.5)
    assert torch.equal(got, torch.cat(alone))
    # no mask: every slot below each token's kv_len is visible (decode rows)
    one = torch.tensor([1, 0, 3])
    got = kernels.attend_rows(q[:3], k, v, one, torch.tensor([7, 20, 64]), torch.empty(0, dtype=torch.bool), 0.5)
    for i in range(3):
        ref = kernels.attend(q[i : i + 1], k[one[i]], v[one[i]], torch.empty(0, dtype=torch.bool), [7, 20, 64][i], 0.5)
        assert torch.equal(got[i : i + 1], ref)


# ----------------------------------------------------------------------------- the build lock

HOLDER = """
import select, sys
from pathlib import Path
from models.common.cpu_kernels import BATON, build_lock
folder = Path(sys.argv[1])
with build_lock(folder):
    (folder / BATON).touch()  # torch's baton, as during a compile
    print("holding", flush=True)
    select.select([sys.stdin], [], [], float(sys.argv[2]))  # until stdin closes, or at most argv[2] s
    print("baton intact" if (folder / BATON).exists() else "baton removed", flush=True)
    (folder / BATON).unlink(missing_ok=True)  # torch's release
"""


def _holder(folder: Path, hold_s: float) -> subprocess.Popen:
    """Another process in the middle of a kernel build (holding both locks)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(hold_s)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def _finish(holder: subprocess.Popen) -> str:
    """Let the holder go; what it said about its baton."""
    if not holder.stdin.closed:
        holder.stdin.close()
    holder.wait(timeout=30)
    return holder.stdout.read().strip()


def test_a_killed_builds_lock_is_taken_over(tmp_path):
    """SIGKILL mid-build leaves torch's baton, which its load would wait on forever."""
    holder = _holder(tmp_path, 60)
    holder.kill()
    holder.wait()
    assert (tmp_path / BATON).exists()
    with build_lock(tmp_path, timeout_s=10):
        assert not (tmp_path / BATON).exists()
        assert (tmp_path / BUILD_LOCK).read_text().strip() == str(os.getpid())


def test_a_live_build_is_waited_for_not_broken(tmp_path, log_lines):
    holder = _holder(tmp_path, 60)
    finish = threading.Timer(2.0, holder.stdin.close)
    finish.start()
    try:
        with build_lock(tmp_path, timeout_s=30):
            assert finish.finished.is_set(), "entered while the other build held the lock"
            assert not (tmp_path / BATON).exists()  # released by its owner
    finally:
        finish.cancel()
        said = _finish(holder)
    assert said == "baton intact"
    assert any(f"waiting for process {holder.pid}, which is building the CPU kernel in {tmp_path}" in line
               for line in log_lines), log_lines


def test_a_hung_build_is_waited_for_at_most_the_timeout(tmp_path):
    holder = _holder(tmp_path, 20)  # lets go by itself, so an unbounded wait fails rather than hangs
    try:
        with pytest.raises(TimeoutError, match=f"process {holder.pid} has held the kernel build lock .*{BUILD_LOCK}"):
            with build_lock(tmp_path, timeout_s=1.5):
                pass
        assert (tmp_path / BATON).exists()
    finally:
        said = _finish(holder)
    assert said == "baton intact"


PROBE_SOURCE = """
#include <Python.h>
static struct PyModuleDef probe = {PyModuleDef_HEAD_INIT, "specdec_lock_probe", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit_specdec_lock_probe(void) { return PyModule_Create(&probe); }
"""


@pytest.mark.skipif(not (shutil.which("c++") and is_ninja_available()), reason="no compiler or ninja")
def test_torch_load_after_a_killed_build_finishes(tmp_path):
    """End to end through torch's own load (a tiny extension, seconds to build): the baton a killed
    build left in $TORCH_EXTENSIONS_DIR/<name>/ no longer makes the next load sleep forever."""
    source = tmp_path / "probe.cpp"
    source.write_text(PROBE_SOURCE)
    (tmp_path / "ext" / "specdec_lock_probe").mkdir(parents=True)
    (tmp_path / "ext" / "specdec_lock_probe" / BATON).touch()
    code = ("import sys; from models.common.cpu_kernels import load_extension; "
            f"print(load_extension('specdec_lock_probe', [{str(source)!r}]).__name__)")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "specdec_lock_probe"
    assert "left by a kernel build that was killed" in done.stderr
    assert not (tmp_path / "ext" / "specdec_lock_probe" / BATON).exists()
