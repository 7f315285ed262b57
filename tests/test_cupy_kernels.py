"""The CuPy quantizer against the numpy reference: the same integers, bit for bit (GPU only).

Skipped, with the reason, where CuPy is not installed or no CUDA device is visible. Checked: the
in-kernel noise equals numpy's u_j; random and deterministic rounding of float32 and float64 inputs
with scalar and per-coordinate alpha give identical integers, clipped counts, max |Int| and sent
values for int8/int16/int32 wires, and int64 clipping at the largest double below the bound;
non-finite inputs are zeroed and reported the same way; decoding
(scalar and array alpha, and the local C(v)) is bitwise equal; DeviceCommunicator returns the same sums,
maxima, gathers and broadcasts through pinned host staging and (where the library is CUDA-aware)
directly, counting the bytes; numpy control buffers pass through it unchanged.
"""

import numpy as np
import pytest

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install mpiopt[gpu])")
try:
    if cupy.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no CUDA device visible to CuPy", allow_module_level=True)
except cupy.cuda.runtime.CUDARuntimeError as err:
    pytest.skip(f"no usable CUDA device: {err}", allow_module_level=True)

from mpiopt.comm import MPICommunicator  # noqa: E402
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
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("wire", [np.int8, np.int16, np.int32])
@pytest.mark.parametrize("per_coordinate", [False, True])
def test_encode_is_bit_identical(rounding, dtype, wire, per_coordinate):
    n, seed, worker, step = 4, 11, 2, 37
    v = vector(dtype)
    alpha = (np.linspace(0.5, 40.0, D) if per_coordinate else np.float64(9.5))
    cpu, dev = ref.Quantizer(D, seed, worker, n, rounding), gpu.Quantizer(D, seed, worker, n, rounding)
    out_cpu, out_dev = np.empty(D, wire), cupy.empty(D, wire)
    a_dev = cupy.asarray(alpha) if per_coordinate else alpha
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
    out_cpu, out_dev = np.empty(D), cupy.empty(D)
    ref.Quantizer.decode(s, alpha, n, out_cpu)
    gpu.Quantizer.decode(cupy.asarray(s), a_dev, n, out_dev)
    np.testing.assert_array_equal(cupy.asnumpy(out_dev), out_cpu)

    cpu, dev = ref.Quantizer(D, 0, 0, n), gpu.Quantizer(D, 0, 0, n)
    v = vector(np.float32)
    cpu.encode(v, alpha, np.empty(D, np.int32), step=4)
    dev.encode(cupy.asarray(v), a_dev, cupy.empty(D, np.int32), step=4)
    np.testing.assert_array_equal(cupy.asnumpy(dev.decode_local(a_dev, out_dev)), cpu.decode_local(alpha, out_cpu))


@pytest.mark.parametrize("cuda_aware", [False, True])
def test_device_communicator(cuda_aware):
    if cuda_aware and not gpu.cuda_aware_mpi():
        pytest.skip("this MPI library is not CUDA-aware (MPIX_Query_cuda_support() == 0)")
    comm = MPICommunicator()
    red = gpu.DeviceCommunicator(comm, cuda_aware=cuda_aware)
    buf = cupy.arange(-50, 50, dtype=np.int8)
    red.allreduce_int(buf)
    np.testing.assert_array_equal(cupy.asnumpy(buf), np.arange(-50, 50) * comm.size)
    assert comm.bytes_sent == 100
    f = cupy.linspace(0.0, 1.0, 33)
    red.allreduce_float(f)
    np.testing.assert_array_equal(cupy.asnumpy(f), np.linspace(0.0, 1.0, 33) * comm.size)
    rows = cupy.empty((comm.size, 3))
    red.allgather(cupy.full(3, float(comm.rank)), rows)
    np.testing.assert_array_equal(cupy.asnumpy(rows), np.repeat(np.arange(comm.size, dtype=float), 3).reshape(-1, 3))
    top = cupy.full(2, comm.rank, dtype=np.int64)
    red.allreduce_max(top)
    assert cupy.asnumpy(top).tolist() == [comm.size - 1] * 2
    host = np.array([comm.rank], dtype=np.int64)
    assert red.allreduce_max(host) is host and host[0] == comm.size - 1
    root = cupy.full(4, float(comm.rank))
    red.broadcast(root, root=0)
    assert cupy.asnumpy(root).tolist() == [0.0] * 4
