"""Deep Gradient Compression (Lin et al., 2018): sparse (index, value) pairs with momentum correction.

Each rank, per step:

1. g = stochastic gradient, clipped to norm ``clip_norm`` when set (local gradient clipping);
2. momentum correction: u = m u + g, v = v + u;
3. threshold: the k-th largest |v| estimated from a random sample of coordinates (this rank's own
   generator), or exact when the sample would cover all of v (small d); selects |v| >= thr and,
   when that gives more than k, keeps exactly the k largest among those candidates;
4. sends the selected (int32 index, float value) pairs: an Allgather of one int32 count per rank
   (a small control collective, counted; -1 signals a non-finite v so every rank stops together),
   then an Allgatherv of the pairs;
5. momentum factor masking: u and v are cleared exactly where pairs were sent;
6. x -= eta * (sum of the n received sparse vectors) / n, summed in rank order on every rank.

The density k/d follows a sparsity warm-up: it decays geometrically from ``warmup_density`` to
``density`` over the first ``warmup_iters`` iterations (DGC's exponential warm-up, per iteration).
"""

import math

import numpy as np

from mpiopt.errors import InputError
from mpiopt.methods.base import Method, float_dtype

INDEX_DTYPE = np.dtype("<i4")
COUNT_DTYPE = np.dtype(np.int32)


def pair_dtype(value_dtype) -> np.dtype:
    """A packed (index int32, value) record: 12 bytes with float64 values, 8 with float32."""
    return np.dtype([("index", INDEX_DTYPE), ("value", np.dtype(value_dtype).newbyteorder("<"))])


def density_at(k: int, density: float, warmup_iters: int, warmup_density: float) -> float:
    """The target density at iteration k (0-based): geometric decay from warmup_density to density."""
    start = max(warmup_density, density)
    if k >= warmup_iters or start == density:
        return density
    return start * (density / start) ** (k / warmup_iters)


def count_for(density: float, d: int) -> int:
    """Coordinates sent at this density: ceil(density * d), at least 1 and at most d."""
    return min(d, max(1, math.ceil(round(density * d, 9))))


def sample_size(d: int, density: float, ratio: float = 0.01, min_hits: int = 20) -> int:
    """Coordinates sampled to estimate the threshold: ``ratio`` of d, and enough that about
    ``min_hits`` of them lie above the target threshold; d (exact top-k) when that is all of v."""
    return min(d, max(math.ceil(ratio * d), math.ceil(min_hits / density)))


def select(absv: np.ndarray, k: int, rng: np.random.Generator, sample: np.ndarray, where: np.ndarray,
           where_int: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Indices (ascending) of at most k coordinates of largest |v|, by a sampled threshold.

    Scratch: ``sample`` and ``where`` (float64) and ``where_int`` (intp) of the sample size s,
    ``mask`` (bool) of size d. When s == d the threshold is the exact k-th largest |v| and exactly k
    indices come back; otherwise thr is the ceil(k s / d)-th largest of s coordinates drawn
    uniformly with replacement from ``rng``, and the result is every |v| >= thr, cut to the k largest.
    """
    d, s = absv.size, sample.size
    if s >= d:
        sample[...] = absv
        hits = k
    else:
        rng.random(out=where)
        where *= d
        where_int[...] = where
        np.minimum(where_int, d - 1, out=where_int)
        np.take(absv, where_int, out=sample)
        hits = min(s, max(1, math.ceil(k * s / d)))
    sample.partition(s - hits)
    thr = sample[s - hits]
    np.greater_equal(absv, thr, out=mask)
    chosen = np.flatnonzero(mask)
    if chosen.size > k:
        keep = np.argpartition(absv[chosen], chosen.size - k)[chosen.size - k:]
        chosen = np.sort(chosen[keep])
    return chosen


def scatter_sum(index: np.ndarray, value: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = the dense sum of the sparse pairs (repeated indices add up), in the order given."""
    out[...] = 0.0
    np.add.at(out, index, value)
    return out


class DGC(Method):
    """Deep Gradient Compression with momentum correction, masking, clipping and sparsity warm-up.

    State: ``u`` (momentum) and ``v`` (accumulated velocity), this rank's own. Wire per step:
    4 bytes (the count) + count * (4 + value bytes).
    """

    name = "dgc"
    OPTIONS = {"momentum": 0.9, "density": 0.01, "warmup_iters": 100, "warmup_density": 0.25,
               "clip_norm": None, "float_dtype": "float64"}
    identical_iterates = True

    def __init__(self, ctx, **options):
        momentum = options.get("momentum", self.OPTIONS["momentum"])
        if not 0.0 <= float(momentum) < 1.0:  # before the base class derives the default step from it
            raise InputError(f"--momentum must be in [0, 1), got {momentum}", collective=True)
        super().__init__(ctx, **options)
        o = self.opts
        for key in ("density", "warmup_density"):
            if not 0.0 < float(o[key]) <= 1.0:
                raise InputError(f"--{key.replace('_', '-')} must be in (0, 1], got {o[key]}", collective=True)
        if int(o["warmup_iters"]) < 0:
            raise InputError(f"--warmup-iters must be >= 0, got {o['warmup_iters']}", collective=True)
        if o["clip_norm"] is not None and not float(o["clip_norm"]) > 0:
            raise InputError(f"--clip-norm must be a positive number, got {o['clip_norm']}", collective=True)
        self._value_dtype = float_dtype(o["float_dtype"])

    def default_lr(self) -> float:
        """SGD's 1/(2 L_max) shrunk by (1 - m): momentum multiplies the effective step by 1/(1 - m)."""
        return (1.0 - float(self.opts["momentum"])) / (2.0 * self.ctx.L_max)

    def density_at(self, k: int) -> float:
        o = self.opts
        return density_at(k, float(o["density"]), int(o["warmup_iters"]), float(o["warmup_density"]))

    def count_at(self, k: int) -> int:
        """k_t: the number of coordinates this method aims to send at iteration k."""
        return count_for(self.density_at(k), self.ctx.problem.dim)

    def start(self, x: np.ndarray) -> None:
        d, n = x.size, self.ctx.comm.size
        if d > np.iinfo(INDEX_DTYPE).max:
            raise InputError(f"dgc sends int32 indices; d = {d} is too large", collective=True)
        self.state = {"u": np.zeros(d), "v": np.zeros(d)}
        self._g = np.empty(d)
        self._absv = np.empty(d)
        self._mask = np.empty(d, dtype=bool)
        self._agg = np.empty(d)
        s = sample_size(d, float(self.opts["density"]))
        self._sample = np.empty(s)
        self._where = np.empty(s)
        self._where_int = np.empty(s, dtype=np.intp)
        kmax = max(self.count_at(0), self.count_at(int(self.opts["warmup_iters"])))
        self._pairs = pair_dtype(self._value_dtype)
        self._send = np.zeros(kmax, dtype=self._pairs)
        self._recv = np.zeros(n * kmax, dtype=self._pairs)
        self._count = np.zeros(1, dtype=COUNT_DTYPE)
        self._counts = np.zeros(n, dtype=COUNT_DTYPE)
        self._byte_counts = np.zeros(n, dtype=np.int64)
        self.sent = 0
        """Pairs this rank sent at the last step (``self._send[:self.sent]``)."""

    def last_sent(self):
        """(indices, values) this rank sent at the last step (views, valid until the next step)."""
        pairs = self._send[: self.sent]
        return pairs["index"], pairs["value"]

    def step(self, x: np.ndarray, k: int) -> None:
        comm, o = self.ctx.comm, self.opts
        u, v = self.state["u"], self.state["v"]
        g = self.ctx.problem.stochastic_grad(x, self.sample(), out=self._g)
        if o["clip_norm"] is not None:
            norm = math.sqrt(float(np.dot(g, g)))
            if norm > float(o["clip_norm"]):
                g *= float(o["clip_norm"]) / norm
        u *= float(o["momentum"])
        u += g
        v += u

        absv = np.abs(v, out=self._absv)
        bad = not np.isfinite(absv, out=self._mask).all()
        if bad:
            chosen = np.empty(0, dtype=np.intp)
            self._count[0] = -1
        else:
            chosen = select(absv, self.count_at(k), self.ctx.sample_rng, self._sample, self._where,
                            self._where_int, self._mask)
            self._count[0] = chosen.size
        comm.allgather(self._count, self._counts)
        if (self._counts < 0).any():
            self.raise_non_finite(k, bad)

        c = chosen.size
        pairs = self._send[:c]
        pairs["index"] = chosen
        pairs["value"] = v[chosen]
        v[chosen] = 0.0
        u[chosen] = 0.0
        self.sent = c

        np.multiply(self._counts, self._pairs.itemsize, out=self._byte_counts)
        total = int(self._counts.sum())
        comm.allgatherv(self._send.view(np.uint8)[: c * self._pairs.itemsize],
                        self._recv.view(np.uint8), self._byte_counts)
        received = self._recv[:total]
        self.info_bits += 8 * (COUNT_DTYPE.itemsize + c * self._pairs.itemsize)

        scatter_sum(received["index"], received["value"], self._agg)
        self._agg *= self.lr / comm.size
        x -= self._agg
