"""fp16, bf16, topk and dgc in one process (a communicator of size 1), bf16's rounding against torch,
and compressors registered from outside the package running through ``mpiopt.minimize``.

The multi-rank properties (bit-for-bit means, rank order, NaN on one rank) are in
tests/mpi/test_new_compressors_mpi.py.
"""

import importlib.util
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import mpiopt
from mpiopt.comm import MPICommunicator
from mpiopt.compressors import REGISTRY
from mpiopt.compressors.bf16 import bf16_bits, bf16_to_float32
from mpiopt.compressors.dgc import density_at
from mpiopt.compressors.sparse import DENSITY, count_for
from mpiopt.errors import InputError
from mpiopt.problems import LogisticProblem

REPO = Path(__file__).resolve().parents[1]
NEW = ("fp16", "bf16", "topk", "dgc")


class Failed(Exception):
    pass


def fail(k, local_bad):
    raise Failed(k, local_bad)


def make(name, d, seed=0, **opts):
    return REGISTRY[name](MPICommunicator(MPI.COMM_SELF), d, seed=seed, worker=0, fail=fail, **opts)


def exchange(comp, v, k=0):
    """(mean, local, bytes counted) of one exchange."""
    mean, local = np.empty(v.size), np.empty(v.size)
    before = comp.comm.bytes_sent
    comp.exchange(v, k, np.zeros(v.size), 0.1, mean, local)
    return mean, local, comp.comm.bytes_sent - before


def gaussian(d, seed=0):
    return 3.0 * np.random.default_rng(seed).standard_normal(d)


def test_new_compressors_are_registered_biased_with_declared_options():
    for name in NEW:
        cls = REGISTRY[name]
        assert cls.unbiased is False and cls.omega(10, {}) == 0.0
        assert all(o.help for o in cls.options)
    assert {REGISTRY[n].collective for n in NEW} == {"alltoall", "allgather"}
    assert DENSITY in REGISTRY["topk"].options and DENSITY in REGISTRY["dgc"].options  # one meaning


def test_bf16_rounding_matches_torch_bit_for_bit():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.finfo(np.float32).max, 1e-45, -1e-45, 1.00390625,
                      1.01171875, 3.4e38], dtype=np.float32)  # ties to even up and down, overflow to inf
    x = np.concatenate([edges, rng.standard_normal(5000).astype(np.float32),
                        rng.integers(0, 2 ** 32, 50000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    with np.errstate(invalid="ignore"):
        got = bf16_bits(x, np.empty(x.size, np.uint16), np.empty(x.size, np.uint32))
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(x)
    assert nan.any() and np.array_equal(got[~nan], want[~nan])
    assert np.isnan(bf16_to_float32(got[nan], np.empty(int(nan.sum()), np.float32))).all()


def test_fp16_on_one_rank_is_the_half_precision_cast():
    v = gaussian(101)
    mean, local, nbytes = exchange(make("fp16", v.size), v)
    want = v.astype(np.float16).astype(np.float64)
    assert np.array_equal(mean, want) and np.array_equal(local, want)
    assert nbytes == 2 * v.size


def test_bf16_on_one_rank_is_the_bfloat16_rounding():
    v = gaussian(101)
    comp = make("bf16", v.size)
    mean, local, nbytes = exchange(comp, v)
    bits = bf16_bits(v.astype(np.float32), np.empty(v.size, np.uint16), np.empty(v.size, np.uint32))
    want = bf16_to_float32(bits, np.empty(v.size, np.float32)).astype(np.float64)
    assert np.array_equal(mean, want) and np.array_equal(local, want)
    assert nbytes == 2 * v.size and comp.bits == 16 * v.size


@pytest.mark.parametrize("float_dtype,pair", [("float64", 12), ("float32", 8)])
def test_topk_sends_exactly_k_pairs_of_largest_magnitude(float_dtype, pair):
    v = gaussian(123)
    comp = make("topk", v.size, density=0.05, float_dtype=float_dtype)
    mean, local, nbytes = exchange(comp, v)
    k = math.ceil(0.05 * v.size)
    top = np.sort(np.argsort(-np.abs(v))[:k])
    want = np.zeros(v.size)
    want[top] = v[top].astype(float_dtype)
    assert np.array_equal(np.asarray(comp.sent_indices), top)
    assert np.array_equal(mean, want) and np.array_equal(local, want)
    assert nbytes == pair * k and comp.bits == 8 * pair * k


@pytest.mark.parametrize("name", ["topk", "dgc"])
def test_ties_at_the_cut_go_to_the_lowest_indices(name):
    """Which of several equal |v| is sent must not depend on the CPU (numpy's argpartition leaves ties
    in an order that follows its SIMD target): the lowest indices win, as a stable sort puts them."""
    rng = np.random.default_rng(5)
    d = 4000
    v = rng.choice([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0], size=d) * rng.choice([1.0, 1.0, 0.5], size=d)
    comp = make(name, d, density=0.1, **({"warmup_iters": 0} if name == "dgc" else {}))
    exchange(comp, v)
    sent = np.asarray(comp.sent_indices)
    c = count_for(0.1, d)
    assert sent.size == c if name == "topk" else 0 < sent.size <= c
    want = np.sort(np.argsort(-np.abs(v), kind="stable")[:sent.size])
    assert np.array_equal(sent, want)


def test_dgc_count_follows_the_sparsity_warmup():
    d, opts = 123, {"density": 0.02, "warmup_iters": 10, "warmup_density": 0.3}
    comp = make("dgc", d, **opts)
    counts = []
    for k in range(14):
        v = gaussian(d, seed=k)
        _, _, nbytes = exchange(comp, v, k)
        c = len(comp.sent_indices)
        assert c == count_for(density_at(k, 0.02, 10, 0.3), d)  # d this small: the exact top-c
        assert np.array_equal(np.asarray(comp.sent_indices), np.sort(np.argsort(-np.abs(v))[:c]))
        assert nbytes == 4 + 12 * c
        counts.append(c)
    assert counts[0] == math.ceil(0.3 * d) and counts[-1] == math.ceil(0.02 * d)
    assert counts == sorted(counts, reverse=True)


def test_dgc_sampling_is_a_pure_function_of_seed_worker_and_step():
    """Counter-based noise: no generator state to keep, another seed samples other coordinates."""
    d, v = 20000, gaussian(20000)
    walked = {seed: make("dgc", d, seed=seed, warmup_iters=0) for seed in (3, 4)}
    picked = {seed: [] for seed in walked}
    for k in range(7):
        for seed, comp in walked.items():
            exchange(comp, v, k)
            picked[seed].append(np.array(comp.sent_indices))
            assert 0 < picked[seed][-1].size <= count_for(0.01, d)
    jumped = make("dgc", d, seed=3, warmup_iters=0)
    exchange(jumped, v, 6)
    assert np.array_equal(np.asarray(jumped.sent_indices), picked[3][6])
    assert any(not np.array_equal(a, b) for a, b in zip(picked[3], picked[4]))


BEYOND_HALF = [("fp16", 7e4), ("bf16", 1e300)]
"""Finite, but beyond the 16-bit format's range: it becomes inf on the wire."""


@pytest.mark.parametrize("name,bad", [(n, b) for n in NEW for b in (np.nan, np.inf)] + BEYOND_HALF)
def test_non_finite_values_call_fail_with_the_local_flag(name, bad):
    v = gaussian(50)
    v[7] = bad
    with pytest.raises(Failed) as err:
        exchange(make(name, v.size), v, 4)
    assert err.value.args == (4, True)


@pytest.mark.parametrize("name,opts,flag", [
    ("topk", {"density": 0}, "--density"),
    ("topk", {"density": 1.5}, "--density"),
    ("dgc", {"warmup_iters": -1}, "--warmup-iters"),
    ("dgc", {"warmup_density": 0.0}, "--warmup-density"),
    ("topk", {"float_dtype": "float16"}, "--float-dtype"),
    ("fp16", {"density": 0.1}, "does not take"),
])
def test_option_checks_name_the_flag(name, opts, flag):
    """Called from Python the message names the keyword (``density=``), from ``mpiopt run`` the flag."""
    keyword = flag if not flag.startswith("--") else flag[2:].replace("-", "_") + "="
    with pytest.raises(InputError, match=keyword):
        make(name, 10, **opts)


# ---- compressors registered from outside the package ----------------------------------------

TOY = '''
"""A toy: keep each coordinate with probability 3/4, scaled by 4/3 (unbiased, omega 1/3); float Allreduce."""
from mpiopt.compressors import Compressor, register
from mpiopt.compressors.base import all_finite


@register
class Dropout(Compressor):
    name = "toy"
    unbiased = True
    collective = "allreduce_float"

    @classmethod
    def omega(cls, dim, opts):
        return 1.0 / 3.0

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        self.noise = self.quantizer(dim)
        self.kept = self.xp.empty(dim)

    def exchange(self, v, k, x, lr, out_mean, out_local=None):
        self.xp.less(self.noise.noise(k), 0.75, out=self.kept)
        self.kept *= 4.0 / 3.0
        self.kept *= v
        if out_local is not None:
            out_local[...] = self.kept
        self.comm.allreduce_float(self.kept)
        if not all_finite(self.kept):
            self.fail(k, not all_finite(v))
        self.xp.multiply(self.kept, 1.0 / self.n, out=out_mean)
        self.bits, self.clipped = 64 * self.dim, 0
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy module, written outside the package and imported from its file."""
    path = tmp_path_factory.mktemp("outside") / "toy_compressor.py"
    path.write_text(textwrap.dedent(TOY))
    spec = importlib.util.spec_from_file_location("toy_compressor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def problem():
    """A planted logistic model on 400 unit rows of 30 features."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((400, 30))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    return LogisticProblem(A, np.sign(A @ rng.standard_normal(30)), l2=1e-3)


@pytest.mark.parametrize("method", ["sgd", "ef-sgd", "diana"])
def test_a_compressor_registered_from_outside_runs_through_minimize(toy, problem, method):
    assert REGISTRY["toy"] is toy.Dropout
    res = mpiopt.minimize(problem, method, MPI.COMM_SELF, compressor="toy", iters=300, seed=0)
    loss = res.trace["history"]["loss"]
    assert res.trace["config"]["compressor"] == "toy"
    assert loss[-1] < 0.85 * loss[0]
    assert res.trace["history"]["wire_bytes"][-1] == 300 * 8 * problem.dim


def test_the_custom_compressor_example_runs():
    res = subprocess.run([sys.executable, str(REPO / "examples" / "custom_compressor.py")], capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["sgd", "ef-sgd", "diana"]
