"""The DDP IntSGD hook's pass after the sum (decoding, mean into the bucket, x~'s move, its squares
summed) fused by numba (mpiopt.kernels.move_numba) gives the numpy passes' bits, in the kernel and in
the hook."""

import subprocess
import sys

import numpy as np
import pytest

move_numba = pytest.importorskip("mpiopt.kernels.move_numba")
from mpiopt.kernels import numba as numba_kernel  # noqa: E402 (after the skip: numba is optional)


def numpy_settle(rows, lrs, mean, scale, x, nxt, out, whole_sum):
    """The engine's numpy passes after the decoding (mpiopt.torch.intsgd_engine.IntSGDEngine._move's
    reference branch): the mean into out, x~'s move, each row's squares summed."""
    out[...] = mean
    if scale != 1.0:
        mean = mean / scale
    sums = []
    for p, c, n, b in rows.tolist():
        np.multiply(mean[p:p + n], lrs[b], out=nxt[c:c + n])
        np.subtract(x[c:c + n], nxt[c:c + n], out=nxt[c:c + n])
        sq = nxt[c:c + n] - x[c:c + n]
        np.multiply(sq, sq, out=sq)
        sums.append(sq.sum() if whole_sum else np.add.reduceat(sq, [0])[0])
    return np.array(sums)


@pytest.mark.parametrize("scale", [1.0, 1024.0, 3.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decoded", ["mean", "one alpha", "block alphas"])
def test_fused_pass_has_the_numpy_passes_bits(scale, dtype, decoded):
    """settle_rows (decoding, the mean into the bucket, x~'s move, each row's squares summed in
    numpy's pairwise order, for rows of 1 to 5000 coordinates) against the quantizer's decode and
    numpy's passes, bit for bit, for numpy's ``sum`` and ``add.reduceat``."""
    from mpiopt.kernels.numba import Quantizer

    rng = np.random.default_rng(7)
    sizes = [5, 1000, 1, 37, 129, 5000, 8]  # a bucket's rows in another order than the optimizer's coordinates
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    coords = np.array([7100, 0, 7043, 7005, 1000, 2000, 7050])
    rows = np.array([[p, c, n, b] for b, (p, c, n) in enumerate(zip(starts, coords, sizes))])
    dim, n_ranks = sum(sizes), 3
    lrs = rng.uniform(1e-4, 1e-1, len(sizes))
    x = rng.standard_normal(7200)
    ints = rng.integers(-128, 128, dim).astype(np.int8)
    alpha = {"mean": 1.0, "one alpha": 37.3, "block alphas": rng.uniform(1.0, 1e4, len(sizes))}[decoded]
    quant = Quantizer(dim, 0, 0, n_ranks, blocks=starts)  # decoding reads positions and blocks only
    mean = rng.standard_normal(dim) * 10.0 ** rng.integers(-8, 4, dim)
    if decoded != "mean":
        quant.decode(ints, alpha, n_ranks, mean)
        _, alphas, _, one, c, r, mul, inv_n = quant.decoding(ints, alpha, n_ranks, mean)
        args = (ints, np.full(dim, np.nan), False, alphas, one, mul, c, r, inv_n)
    else:
        args = (ints, mean, True, np.ones(1), True, False, 1.0, 0.0, 1.0)
    for whole_sum in (True, False):
        got = [np.full(7200, np.nan), np.empty(dim, dtype=dtype), np.empty(len(sizes))]
        want = [np.full(7200, np.nan), np.empty(dim, dtype=dtype)]
        move_numba.settle_rows(rows, *args, lrs, scale, x, got[0], got[1], whole_sum, got[2])
        want.append(numpy_settle(rows, lrs, mean, scale, x, *want, whole_sum))
        for g, w in zip(got, want):
            assert g.tobytes() == w.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sums", [np.int8, np.int16])
@pytest.mark.parametrize("decoded", ["one alpha", "block alphas"])
def test_decode_rows_has_the_decodes_bits(dtype, sums, decoded):
    """decode_rows (the hook's pass after the sum under the rules that keep no x~) writes the quantizer's
    float64 decode rounded once to the bucket's dtype, bit for bit: rows of 1 to 5000 coordinates,
    by product where its check over the int8 range passes, by division where the range is not checked
    (int16) or the check is skipped (lo > hi), with power-of-two alphas (the exponent rule's) and
    others."""
    from mpiopt.kernels.numba import Quantizer

    rng = np.random.default_rng(11)
    sizes = [5, 1000, 1, 37, 129, 5000, 8]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rows = np.array([[p, 0, n, b] for b, (p, n) in enumerate(zip(starts, sizes))])
    dim, n_ranks = sum(sizes), 3
    top = 127 if sums == np.int8 else 30000
    ints = rng.integers(-top, top + 1, dim).astype(sums)
    quant = Quantizer(dim, 0, 0, n_ranks, blocks=starts)
    for alpha in ({"one alpha": 37.3, "block alphas": rng.uniform(1.0, 1e4, len(sizes))}[decoded],
                  {"one alpha": 0.125, "block alphas": 2.0 ** rng.integers(-10, 10, len(sizes))}[decoded]):
        mean = np.empty(dim)
        quant.decode(ints, alpha, n_ranks, mean)
        _, alphas, _, one, c, _, _, inv_n = quant.decoding(ints, alpha, n_ranks, mean)
        ranges = [(-128, 127), (1, 0)] if sums == np.int8 else [(1, 0)]
        for lo, hi in ranges:
            out = np.full(dim, np.nan, dtype=dtype)
            move_numba.decode_rows(rows, ints, alphas, one, c, inv_n, lo, hi, out)
            assert out.tobytes() == mean.astype(dtype).tobytes()


def test_the_product_check_refuses_a_product_that_rounds_otherwise():
    """product_is_decode finds an integer of the range whose product and quotient round apart (float64
    output: they often do), and refuses an empty range."""
    out = np.empty(1)
    assert not numba_kernel.product_is_decode(-128, 127, False, 37.3, 1.0, 1.0 / 3, (1.0 / 3) / 37.3, out)
    assert not numba_kernel.product_is_decode(1, 0, True, 1.0, 2.0, 1.0, 0.5, out)
    assert numba_kernel.product_is_decode(-128, 127, True, 1.0, 2.0, 1.0, 0.5, out)


HOOK_RUN = """
import sys, tempfile, hashlib, torch, torch.distributed as dist
from mpiopt.torch.hooks import IntSGDState, intsgd_hook
alpha = sys.argv[1]
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
digests = []
for kernel, tracks in (("numba", None), ("numpy", None), ("numba", True), ("numpy", True)):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 3))
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.01)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    state = IntSGDState(None, opt, wire_dtype="auto", seed=3, kernel=kernel, alpha=alpha,
                        **({"alpha0": 50.0} if alpha == "constant" else {}))
    engine = state.engine
    assert engine.tracks_moves == (alpha == "paper")
    if tracks:
        engine.tracks_moves = True  # the exchange as it was before the rules that keep no x~
    ddp.register_comm_hook(state, intsgd_hook)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        X, y = torch.randn(32, 20, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(X), y).backward()
        opt.step()
    assert engine.k == 6
    digest = hashlib.sha256(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().tobytes())
    if alpha == "paper":
        digest.update(engine.state["x"].tobytes() + engine.state["r"].tobytes())
    elif not tracks:
        assert engine.state["x"] is None and "x" not in engine.record()["arrays"]
        older = engine.record()  # a record written when this rule still kept x~ holds one: not taken back
        engine.restore({**older, "arrays": {**older["arrays"], "x": torch.zeros(engine.layout.dim, dtype=torch.float64)}})
        assert engine.state["x"] is None and engine.k == 6
    digests.append(digest.hexdigest())
print(" ".join(digests), flush=True)
import os; os._exit(0)
"""


@pytest.mark.parametrize("alpha", ["paper", "exponent", "constant"])
def test_hook_trains_the_same_bits_with_either_kernel(alpha):
    """Several buckets, AdamW, 6 steps on one gloo rank: the parameters (and under the paper's rule x~ and
    r) are the same bits under kernel='numba' (fused passes) and kernel='numpy'. The exponent and constant
    rules keep no x~ (none in the state or its record, nor taken from an older record) and train the same
    bits as when the engine still moved x~ (``tracks_moves`` forced on). (The script exits with os._exit
    once done: torch's C++ teardown can abort a finished process.)"""
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, "-c", HOOK_RUN, alpha], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    digests = out.stdout.split()
    assert len(digests) == 4 and len(set(digests)) == 1, digests
