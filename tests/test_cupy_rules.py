"""The CuPy path on the CPU: the CuPy-rules module (tests/_cupy_rules.py) refuses what CuPy refuses,
and the compressors and the CuPy quantizer run under it.

What runs here is mpiopt's own code -- the CuPy Quantizer's buffers, launches, alpha modes and
read-backs, the int compressor's exchange, DeviceCommunicator's staging -- with numpy arrays under
CuPy's rules; only the CUDA kernels are replaced, by their numpy twins in the rules module (the GPU
test tests/test_cupy_kernels.py checks the real kernels against the same numpy reference).
"""

import numpy as np
import pytest
from mpi4py import MPI

import _cupy_rules as rules
from mpiopt.comm import MPICommunicator, on_device
from mpiopt.compressors.base import REGISTRY
from mpiopt.compressors.integer import IntCompressor
from mpiopt.kernels import make_quantizer
from mpiopt.kernels import numpy as ref
from mpiopt.kernels.cupy import CHUNK, Quantizer, chunk_table

D = 20_011  # three chunks of CHUNK, not a multiple of anything


class Failed(Exception):
    pass


def fail(k, local_bad):
    raise Failed(k, local_bad)


def vector(dtype=np.float64, seed: int = 0, scale: float = 3.0, d: int = D) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(d) * scale).astype(dtype)


def device_comm():
    """COMM_SELF as the hook and the optimizers see it on a GPU: a DeviceCommunicator, staging through host buffers."""
    comm = on_device(MPICommunicator(MPI.COMM_SELF), xp=rules)
    comm.cuda_aware = False
    return comm


# ---- the rules themselves -------------------------------------------------------------------------

def test_reduceat_exists_for_add_only():
    a = rules.asarray(np.arange(10.0))
    starts = np.array([0, 4])
    np.testing.assert_array_equal(rules.asnumpy(np.add.reduceat(a, starts)), [6.0, 39.0])
    for uf in (np.maximum, np.minimum, np.multiply):
        with pytest.raises(NotImplementedError, match="reduceat"):
            uf.reduceat(a, starts)
    with pytest.raises(NotImplementedError, match="reduce"):
        np.maximum.reduce(a)
    with pytest.raises(NotImplementedError, match="at"):
        np.multiply.at(a, np.array([1]), 2.0)


def test_no_implicit_conversion_and_no_numpy_operands():
    a = rules.zeros(4)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="numpy"):
        rules.multiply(a, np.ones(4))
    with pytest.raises(TypeError, match="numpy"):
        a + np.ones(4)
    with pytest.raises(TypeError, match="list"):
        rules.add([1.0, 2.0], 1.0)
    with pytest.raises(TypeError, match="where"):
        rules.add(a, 1.0, out=a, where=a > 0)
    with pytest.raises(ValueError, match="non-scalar numpy"):
        rules.copyto(a, np.ones(4))
    rules.copyto(a, np.ones(1))
    assert float(a.sum()) == 4.0 and a.tolist() == [1.0] * 4 and rules.asnumpy(a).tolist() == [1.0] * 4


def test_reductions_give_0d_arrays_and_host_reads_are_counted():
    a = rules.asarray(np.arange(5.0))
    with rules.counting() as seen:
        total = a.sum()
        assert isinstance(total, rules.ndarray) and total.ndim == 0
        assert seen.host_reads == 0
        assert float(total) == 10.0 and int(a.max()) == 4 and bool(a.any())
    assert seen.host_reads == 3


def test_dtypes_casts_and_duplicate_indices():
    with pytest.raises(TypeError, match="object"):
        rules.empty(3, dtype=object)
    with pytest.raises(ValueError, match="NaN/inf"):
        rules.asarray(np.array([1.0, np.inf])).astype(np.int32)
    with pytest.raises(ValueError, match="negative"):
        rules.asarray(np.array([-1.0])).astype(np.uint32)
    with pytest.raises(ValueError, match="NaN/inf"):
        rules.copyto(rules.empty(2, dtype=np.int8), rules.asarray(np.array([np.nan, 1.0])), casting="unsafe")
    a = rules.zeros(3)
    with pytest.raises(ValueError, match="repeated"):
        a[rules.asarray(np.array([0, 0]))] = 1.0
    a[rules.asarray(np.array([0, 2]))] = 1.0
    assert a.tolist() == [1.0, 0.0, 1.0]


def test_sort_and_partition_methods_work_in_place_on_views():
    """As cupy.ndarray.sort and .partition (a no-op here would let a wrong threshold pass unseen)."""
    a = rules.asarray(np.array([3.0, 1.0, 2.0, 0.0]))
    a[:3].sort()
    assert a.tolist() == [1.0, 2.0, 3.0, 0.0]
    a.partition(3)
    assert float(a[3]) == 3.0


def test_a_kernel_without_a_twin_is_refused():
    with pytest.raises(NotImplementedError, match="twin"):
        rules.RawKernel("", "mpiopt_unheard_of_float32")


# ---- the CuPy quantizer under the rules: the numpy reference's bits -------------------------------

@pytest.mark.parametrize("rounding", ["random", "deterministic"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("alpha_kind", ["scalar", "blocks", "coordinates"])
def test_quantizer_gives_the_reference_integers(rounding, dtype, alpha_kind):
    n, seed, worker, step = 4, 11, 2, 37
    starts = [0, 5, 9000, 9001, 20_000]
    v = vector(dtype)
    per_coord = np.linspace(0.5, 40.0, D)
    block_alphas = np.array([0.7, 30.0, 2.0, 9.0, 1e-3])
    if alpha_kind == "scalar":
        a_cpu, a_dev = np.float64(9.5), np.float64(9.5)
    elif alpha_kind == "blocks":
        a_cpu = np.repeat(block_alphas, np.diff(starts + [D]))
        a_dev = block_alphas
    else:
        a_cpu, a_dev = per_coord, rules.asarray(per_coord)
    cpu = ref.Quantizer(D, seed, worker, n, rounding)
    dev = Quantizer(D, seed, worker, n, rounding, blocks=starts, xp=rules)
    np.testing.assert_array_equal(rules.asnumpy(dev.noise(step)), cpu.noise(step))
    v_dev = rules.asarray(v)
    for wire in (np.int8, np.int16, np.int32, np.int64):
        out_cpu, out_dev = np.empty(D, wire), rules.empty(D, dtype=wire)
        clipped = cpu.encode(v, a_cpu, out_cpu, step=step)
        assert dev.encode(v_dev, a_dev, out_dev, step=step) == clipped
        np.testing.assert_array_equal(rules.asnumpy(out_dev), out_cpu)
        assert dev.max_abs == cpu.max_abs and dev.finite
        np.testing.assert_array_equal(rules.asnumpy(dev.sent), cpu.sent)
        np.testing.assert_array_equal(rules.asnumpy(dev.rounded), cpu.rounded)
        if wire == np.int8 and alpha_kind != "blocks":
            assert clipped > 0  # the clipping path ran
        for out_type in (np.float32, np.float64):
            got, want = rules.empty(D, dtype=out_type), np.empty(D, out_type)
            np.testing.assert_array_equal(rules.asnumpy(dev.decode_local(a_dev, got)), cpu.decode_local(a_cpu, want))
            np.testing.assert_array_equal(rules.asnumpy(dev.decode(out_dev, a_dev, 3, got)),
                                          cpu.decode(out_cpu, a_cpu, 3, want))
            x_cpu = np.linspace(-1.0, 1.0, D).astype(out_type)
            x_dev = rules.asarray(x_cpu)
            dev.decode_update(out_dev, a_dev, 3, 0.1, x_dev)
            cpu.decode_update(out_cpu, a_cpu, 3, 0.1, x_cpu)
            np.testing.assert_array_equal(rules.asnumpy(x_dev), x_cpu)


def test_quantizer_zeroes_and_reports_non_finite_values():
    v = vector()
    v[[3, 50, 19_000]] = [np.nan, np.inf, -np.inf]
    cpu, dev = ref.Quantizer(D, 5, 0, 2), Quantizer(D, 5, 0, 2, xp=rules)
    out_cpu, out_dev = np.empty(D, np.int16), rules.empty(D, dtype=np.int16)
    cpu.encode(v, np.float64(2.0), out_cpu, step=1)
    dev.encode(rules.asarray(v), 2.0, out_dev, step=1)
    assert not cpu.finite and not dev.finite and dev.max_abs == cpu.max_abs
    np.testing.assert_array_equal(rules.asnumpy(out_dev), out_cpu)


def test_int64_clipping_and_ties_are_the_references():
    v = np.array([1e19, -1e19, 5.0, 0.5, 1.5, 2.5, -0.5, -1.5, 0.49999999999999994])
    cpu = ref.Quantizer(v.size, 0, 0, 1, "deterministic")
    dev = Quantizer(v.size, 0, 0, 1, "deterministic", xp=rules)
    out_cpu, out_dev = np.empty(v.size, np.int64), rules.empty(v.size, dtype=np.int64)
    assert cpu.encode(v, np.float64(1.0), out_cpu, step=0) == dev.encode(rules.asarray(v), 1.0, out_dev, step=0) == 2
    np.testing.assert_array_equal(rules.asnumpy(out_dev), out_cpu)
    assert out_cpu[3:].tolist() == [0, 2, 2, 0, -2, 0]


def test_quantizer_reads_back_16_bytes_per_round_and_allocates_nothing_of_size_d():
    """round: one read-back (max and non-finite count); pack: none unless something may be clipped."""
    dev = Quantizer(D, 0, 0, 4, xp=rules)
    v, out = rules.asarray(vector(np.float32)), rules.empty(D, dtype=np.int8)
    with rules.counting() as seen:
        dev.round(v, 0.5, 0)
        assert dev.max_abs <= 127 // 4
        dev.pack(out)
    assert seen.host_reads == 1
    assert [name for name, _, _ in seen.launches] == ["mpiopt_qmax_float32", "mpiopt_finish", "mpiopt_pack_float32_int8"]
    assert dev.device_bytes < D  # the chunk table and per-chunk partials: far below one byte per coordinate


# ---- fixed-order reductions ---------------------------------------------------------------------

def test_chunks_never_straddle_a_block():
    starts = np.array([0, 3, 3 + CHUNK, 3 + 3 * CHUNK + 1], dtype=np.int64)
    lo, hi, block, first = chunk_table(5 * CHUNK, starts)
    ends = np.append(starts[1:], 5 * CHUNK)
    assert (hi - lo <= CHUNK).all() and (hi > lo).all()
    assert (lo >= starts[block]).all() and (hi <= ends[block]).all()
    np.testing.assert_array_equal(np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]), np.arange(5 * CHUNK))
    np.testing.assert_array_equal(block[first[:-1]], np.arange(len(starts)))


def test_block_sums_are_fixed_order_nonnegative_and_exactly_zero_for_a_still_block():
    starts = [0, 100, 7000, 15_000]
    x = vector(np.float32)
    prev = vector(np.float64, seed=1)
    prev[7000:15_000] = x[7000:15_000]  # block 2 did not move
    runs = []
    for _ in range(2):
        dev = Quantizer(D, 0, 0, 2, blocks=starts, xp=rules)
        x_prev = rules.asarray(prev)
        r, sq, alpha = np.zeros(4), np.empty(4), np.empty(4)
        dev.block_adaptive_alpha(rules.asarray(x), x_prev, r, False, 0.9, 0.1, 2, (np.ones(4), np.ones(4)), sq, alpha)
        np.testing.assert_array_equal(rules.asnumpy(x_prev), x.astype(np.float64))  # x_prev <- x
        runs.append(sq.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0][2] == 0.0 and (runs[0] >= 0).all()
    diff = x.astype(np.float64) - prev
    np.testing.assert_allclose(runs[0], np.add.reduceat(diff * diff, starts), rtol=1e-13)


def test_block_max_abs_is_numpys_maximum_per_block_with_non_finite_values():
    starts = [0, 10, 9000, 18_000]
    v = vector()
    v[20] = np.nan
    v[18_005] = -np.inf
    dev = Quantizer(D, 0, 0, 2, blocks=starts, xp=rules)
    got = dev.block_max_abs(rules.asarray(v), np.empty(4))
    want = np.maximum.reduceat(np.abs(v), starts)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[1]) and got[3] == np.inf


# ---- the compressors under the rules ------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_compressor_runs_under_cupy_rules(name):
    """Each registered compressor's exchange with device arrays (a numpy-only construct raises here);
    its mean equals the numpy arrays' mean, except the int compressor's (alpha's block sums are in
    the fixed chunk order there: see test_int_compressor_under_cupy_rules)."""
    d = 3000
    v = vector(d=d)
    means = []
    for xp, comm in ((rules, device_comm()), (np, MPICommunicator(MPI.COMM_SELF))):
        c = REGISTRY[name](comm, d, seed=0, worker=0, fail=fail, xp=xp, **({"kernel": "numpy"} if name == "int" else {}))
        x, mean = xp.zeros(d), xp.empty(d)
        for k in range(3):
            c.exchange(xp.asarray(v), k, x, 0.1, mean, None)
            x -= 0.1 * mean
        means.append(rules.asnumpy(mean) if xp is rules else mean)
    np.testing.assert_array_equal(means[0], means[1])


@pytest.mark.parametrize("blocks", [None, [0, 7, 5000, 12_000]])
def test_int_compressor_under_cupy_rules(blocks):
    """IntSGD's exchange on device arrays, first_step='exponent' (the hook's and the optimizers'
    default): it raised NotImplementedError (CuPy's maximum.reduceat) before the per-block kernels.
    The first step's integers are the CPU's bit for bit (alpha from a max); later steps' alpha comes
    from block sums in the fixed chunk order, so an integer may differ from the CPU's by one where
    alpha v + u sits on an integer; the ranks-agree property is in tests/mpi/test_cupy_rules_mpi.py."""
    opts = dict(first_step="exponent", block_starts=blocks)
    dev = IntCompressor(device_comm(), D, seed=3, worker=0, fail=fail, xp=rules, **opts)
    cpu = IntCompressor(MPICommunicator(MPI.COMM_SELF), D, seed=3, worker=0, fail=fail, kernel="numpy", **opts)
    assert dev.quant.takes_blocks
    x_dev, x_cpu = rules.zeros(D), np.zeros(D)
    m_dev, m_cpu = rules.empty(D), np.empty(D)
    rng = np.random.default_rng(0)
    for k in range(6):
        g = rng.standard_normal(D) * (1 + k)
        redone = int(dev.state["redone_steps"])
        with rules.counting() as seen:
            dev.exchange(rules.asarray(g), k, x_dev, 0.1, m_dev, None)
        redone = int(dev.state["redone_steps"]) - redone
        cpu.exchange(g, k, x_cpu, 0.1, m_cpu, None)
        got = rules.asnumpy(m_dev)
        if k == 0:
            np.testing.assert_array_equal(got, m_cpu)
            x_dev[...] = x_cpu  # the same iterate from here on: compare the steps' alphas and means
        else:
            np.testing.assert_allclose(dev.alpha_blocks, cpu.alpha_blocks, rtol=1e-12)
            sizes = np.diff(np.append(cpu.starts, D))
            ints_dev = np.rint(got * np.repeat(dev.alpha_blocks, sizes))  # one rank: the mean is S / alpha
            ints_cpu = np.rint(m_cpu * np.repeat(cpu.alpha_blocks, sizes))
            assert np.abs(ints_dev - ints_cpu).max() <= 1 and np.count_nonzero(ints_dev - ints_cpu) <= D // 1000
            # host reads of a step: alpha's block sums, max|Int|, the staged sum, the header (and the
            # staged sum again when the overflow protocol redoes the step in a wider dtype)
            assert seen.host_reads == 4 + redone and seen.syncs == 1 + redone
        x_cpu -= 0.1 * m_cpu
        x_dev[...] = x_cpu


def test_make_quantizer_sends_device_modules_to_the_cupy_kernel():
    q = make_quantizer(rules, "numpy", 10, 0, 0, 2, blocks=[0, 5])
    assert isinstance(q, Quantizer) and q.n_blocks == 2
    with pytest.raises(ValueError, match="layout"):
        make_quantizer(rules, None, 10, 0, 0, layout=[(0, 0, 10)])


def test_every_launch_runs_on_the_stream_and_device_given():
    """device_stream (what torch_stream(tensor) calls with torch's current stream and the tensor's
    device): the quantizer's kernels are queued there, none on the default stream."""
    from mpiopt.kernels.cupy import device_stream

    q = Quantizer(D, 0, 0, 2, blocks=[0, 100], xp=rules)
    v = rules.asarray(vector(np.float32))
    with rules.counting() as seen, device_stream(1, 0xBEEF, xp=rules):
        q.block_max_abs(v, np.empty(2))
        q.encode(v, np.array([2.0, 3.0]), rules.empty(D, dtype=np.int8), step=0)
        q.decode_update(rules.zeros(D, dtype=np.int8), np.array([2.0, 3.0]), 2, 0.1, rules.zeros(D, dtype=np.float32))
    assert len(seen.launches) == 6
    assert {(stream, device) for _, stream, device in seen.launches} == {(0xBEEF, 1)}


def _device_bytes(*holders) -> int:
    """Bytes of the distinct device allocations the objects hold (views counted once, at their owner)."""
    owners = {}

    def visit(obj, depth=0):
        if isinstance(obj, rules.ndarray):
            base = obj._a
            while base.base is not None:
                base = base.base
            owners[id(base)] = base.nbytes
        elif isinstance(obj, (list, tuple)) and depth < 3:
            for item in obj:
                visit(item, depth + 1)
        elif isinstance(obj, dict) and depth < 3:
            for item in obj.values():
                visit(item, depth + 1)
        elif hasattr(obj, "__dict__") and depth < 2 and not isinstance(obj, type):
            visit({k: v for k, v in vars(obj).items() if k != "_last"}, depth + 1)  # _last: the caller's v

    for h in holders:
        visit(h)
    return sum(owners.values())


def test_int_compressor_holds_at_most_12_device_bytes_per_parameter():
    """x_prev (8 bytes) and one wire buffer as wide as the widest integer used (int8 .. int32 here,
    its levels sharing the memory), the quantizer's chunk table and partials: <= 12 bytes per
    parameter, even after the auto wire climbed to int32 and came back."""
    d = 40_000
    comp = IntCompressor(device_comm(), d, seed=0, worker=0, fail=fail, xp=rules, first_step="exponent",
                         block_starts=[0, 100, 20_000])
    x, mean = rules.zeros(d), rules.empty(d)
    rng = np.random.default_rng(0)
    for k in range(8):
        g = rng.standard_normal(d) * (1e8 if k == 3 else 1.0)  # step 3 overflows int8 and int16: redone in int32
        comp.exchange(rules.asarray(g), k, x, 0.1, mean, None)
        x -= 0.1 * mean
    wires = comp.summary()["steps_by_wire"]
    assert "int32" in wires and comp.state["redone_steps"] >= 1, wires
    held = _device_bytes(comp, comp.quant)
    assert 9 * d <= held <= 12 * d + 1024, held / d


class WaitingHost(MPICommunicator):
    """COMM_SELF that checks, at each integer sum, that no kernel the host has not waited for could
    still be writing the buffer MPI reads (on a GPU the quantizer's kernels run asynchronously).
    A device buffer (CUDA-aware MPI's way) is summed through its memory here."""

    def allreduce_int(self, buf, count: bool = True):
        assert rules.stats.unsynced == 0, "MPI would read the integers before the quantizer has written them"
        super().allreduce_int(buf._a if isinstance(buf, rules.ndarray) else buf, count)
        return buf


@pytest.mark.parametrize("cuda_aware", [False, True])
def test_device_communicator_waits_for_the_quantizer_before_mpi_reads(cuda_aware):
    comm = on_device(WaitingHost(MPI.COMM_SELF), xp=rules)
    comm.cuda_aware = cuda_aware
    comp = IntCompressor(comm, D, seed=0, worker=0, fail=fail, xp=rules, first_step="exponent")
    x, mean = rules.zeros(D), rules.empty(D)
    for k in range(3):
        comp.exchange(rules.asarray(vector(seed=k)), k, x, 0.1, mean, None)
        x -= 0.1 * mean
