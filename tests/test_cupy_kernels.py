"""The CuPy quantizer against the numpy reference: the same integers, bit for bit (GPU only).

Skipped, with the reason, where CuPy is not installed or no CUDA device is visible (the same
Python code runs on the CPU under the CuPy-rules module: tests/test_cupy_rules.py). Checked: the
in-kernel noise equals numpy's u_j; random and deterministic rounding of float16/32/64 inputs with
scalar, per-block and per-coordinate alpha give identical integers, clipped counts, max |Int| and
sent values for int8/int16/int32 wires, and int64 clipping at the largest double below the bound;
non-finite inputs are zeroed and reported the same way; decoding (scalar and array alpha, the
local C(v), the fused x -= lr mean) is bitwise equal; the fixed-order block sums and maxima are the
bits of the rules module's numpy twins (so the same on every GPU, rank and run). DeviceCommunicator
runs at 2 ranks in tests/mpi/test_device_comm.py.
"""

import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install mpiopt[gpu])")
try:
    if cupy.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no CUDA device visible to CuPy", allow_module_level=True)
except cupy.cuda.runtime.CUDARuntimeError as err:
    pytest.skip(f"no usable CUDA device: {err}", allow_module_level=True)

import _cupy_rules as rules  # noqa: E402
from mpiopt.kernels import cupy as gpu  # noqa: E402
from mpiopt.kernels import numpy as ref  # noqa: E402

D = 10_007  # not a multiple of any block size


def vector(dtype, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(D) * scale).astype(dtype)


@pytest.mark.parametrize("seed,worker,step", [(0, 0, 0), (7, 3, 12345), (2**40 + 5, 1, 2**33)])
def test_noise_is_numpys(seed, worker, step):
    cpu = ref.Quantizer(D, seed, worker).noise(step)
    dev = gpu.Quantizer(D, seed, worker).noise(step)
    np.testing.assert_array_equal(cupy.asnumpy(dev), cpu)


@pytest.mark.parametrize("rounding", ["random", "deterministic"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("wire", [np.int8, np.int16, np.int32])
@pytest.mark.parametrize("alpha_kind", ["scalar", "blocks", "coordinates"])
def test_encode_is_bit_identical(rounding, dtype, wire, alpha_kind):
    n, seed, worker, step = 4, 11, 2, 37
    v = vector(dtype)
    starts = [0, 17, 5000]
    block_alphas = np.array([40.0, 9.5, 0.5])
    if alpha_kind == "scalar":
        alpha = a_dev = np.float64(9.5)
    elif alpha_kind == "blocks":
        alpha, a_dev = np.repeat(block_alphas, np.diff(starts + [D])), block_alphas
    else:
        alpha = np.linspace(0.5, 40.0, D)
        a_dev = cupy.asarray(alpha)
    cpu, dev = ref.Quantizer(D, seed, worker, n, rounding), gpu.Quantizer(D, seed, worker, n, rounding, blocks=starts)
    out_cpu, out_dev = np.empty(D, wire), cupy.empty(D, wire)
    clipped_cpu = cpu.encode(v, alpha, out_cpu, step=step)
    clipped_dev = dev.encode(cupy.asarray(v), a_dev, out_dev, step=step)
    np.testing.assert_array_equal(cupy.asnumpy(out_dev), out_cpu)
    assert clipped_dev == clipped_cpu
    assert dev.max_abs == cpu.max_abs and dev.finite and cpu.finite
    np.testing.assert_array_equal(cupy.asnumpy(dev.sent), cpu.sent)
    if wire == np.int8:
        assert clipped_cpu > 0  # the clip-and-cast path was exercised


def test_deterministic_ties_round_half_to_even():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999999999999994, 3.0], dtype=np.float64)
    cpu, dev = ref.Quantizer(v.size, 0, 0, 1, "deterministic"), gpu.Quantizer(v.size, 0, 0, 1, "deterministic")
    out_cpu, out_dev = np.empty(v.size, np.int32), cupy.empty(v.size, np.int32)
    cpu.encode(v, np.float64(1.0), out_cpu, step=0)
    dev.encode(cupy.asarray(v), 1.0, out_dev, step=0)
    np.testing.assert_array_equal(cupy.asnumpy(out_dev), out_cpu)
    np.testing.assert_array_equal(out_cpu, [0, 2, 2, 0, -2, 0, 3])


def test_int64_clipping_uses_the_largest_double_below_the_bound():
    v = np.array([1e19, -1e19, 5.0])
    cpu, dev = ref.Quantizer(3, 0, 0, 1, "deterministic"), gpu.Quantizer(3, 0, 0, 1, "deterministic")
    out_cpu, out_dev = np.empty(3, np.int64), cupy.empty(3, np.int64)
    assert cpu.encode(v, np.float64(1.0), out_cpu, step=0) == dev.encode(cupy.asarray(v), 1.0, out_dev, step=0) == 2
    np.testing.assert_array_equal(cupy.asnumpy(out_dev), out_cpu)


def test_non_finite_inputs_are_zeroed_and_reported():
    v = vector(np.float64)
    v[[3, 50, 900]] = [np.nan, np.inf, -np.inf]
    cpu, dev = ref.Quantizer(D, 5, 0, 2), gpu.Quantizer(D, 5, 0, 2)
    out_cpu, out_dev = np.empty(D, np.int16), cupy.empty(D, np.int16)
    cpu.encode(v, np.float64(2.0), out_cpu, step=1)
    dev.encode(cupy.asarray(v), 2.0, out_dev, step=1)
    assert not cpu.finite and not dev.finite
    assert dev.max_abs == cpu.max_abs
    np.testing.assert_array_equal(cupy.asnumpy(out_dev), out_cpu)
    assert (out_cpu[[3, 50, 900]] == 0).all()


@pytest.mark.parametrize("per_coordinate", [False, True])
def test_decode_is_bit_identical(per_coordinate):
    n = 3
    s = np.random.default_rng(1).integers(-120, 120, D).astype(np.int8)
    alpha = np.linspace(0.1, 7.0, D) if per_coordinate else np.float64(0.37)
    a_dev = cupy.asarray(alpha) if per_coordinate else alpha
    cpu, dev = ref.Quantizer(D, 0, 0, n), gpu.Quantizer(D, 0, 0, n)
    for out_type in (np.float32, np.float64):
        out_cpu, out_dev = np.empty(D, out_type), cupy.empty(D, out_type)
        cpu.decode(s, alpha, n, out_cpu)
        dev.decode(cupy.asarray(s), a_dev, n, out_dev)
        np.testing.assert_array_equal(cupy.asnumpy(out_dev), out_cpu)
        x_cpu = np.linspace(-1.0, 1.0, D).astype(out_type)
        x_dev = cupy.asarray(x_cpu)
        cpu.decode_update(s, alpha, n, 0.1, x_cpu)
        dev.decode_update(cupy.asarray(s), a_dev, n, 0.1, x_dev)
        np.testing.assert_array_equal(cupy.asnumpy(x_dev), x_cpu)
        v = vector(np.float32)
        cpu.encode(v, alpha, np.empty(D, np.int32), step=4)
        dev.encode(cupy.asarray(v), a_dev, cupy.empty(D, np.int32), step=4)
        np.testing.assert_array_equal(cupy.asnumpy(dev.decode_local(a_dev, out_dev)), cpu.decode_local(alpha, out_cpu))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_block_reductions_are_the_twins_bits(dtype):
    """The CUDA kernels' fixed reduction order is the one the rules module's twins compute: the same
    block sums and maxima, bit for bit, twice in a row."""
    starts = [0, 3, 9000, 9001, 30_000]
    d = 50_000
    x = np.random.default_rng(2).standard_normal(d).astype(dtype)
    prev = np.random.default_rng(3).standard_normal(d)
    want_sq, got = np.empty(5), np.empty(5)
    twin = gpu.Quantizer(d, 0, 0, 2, blocks=starts, xp=rules)
    twin.block_adaptive_alpha(rules.asarray(x), rules.asarray(prev), np.zeros(5), False, 0.9, 0.1, 2,
                              (np.ones(5), np.ones(5)), want_sq, np.empty(5))
    for _ in range(2):
        dev = gpu.Quantizer(d, 0, 0, 2, blocks=starts)
        dev.block_adaptive_alpha(cupy.asarray(x), cupy.asarray(prev), np.zeros(5), False, 0.9, 0.1, 2,
                                 (np.ones(5), np.ones(5)), got, np.empty(5))
        np.testing.assert_array_equal(got, want_sq)
    np.testing.assert_array_equal(dev.block_max_abs(cupy.asarray(x), got),
                                  np.maximum.reduceat(np.abs(x.astype(np.float64)), starts))
    assert dev.step_squares_sum(cupy.asarray(x), cupy.asarray(prev)) == twin.step_squares_sum(
        rules.asarray(x), rules.asarray(prev))
