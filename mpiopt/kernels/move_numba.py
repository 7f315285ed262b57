"""The DDP IntSGD hook's pass after the integer sum, fused: decoding, the bucket's mean written back,
x~'s move and each row's squared move summed.

After a bucket's integers S are summed, the hook's engine (:mod:`mpiopt.torch.intsgd_engine`) decodes
the float64 mean m = S / (n alpha), writes it back into the DDP bucket in the bucket's dtype, moves
IntSGD's own iterate x~_next = x~ - lr * (m / s) (s the GradScaler's scale, 1 without one) and adds
up each parameter's squared move (x~_next - x~)^2 for r. Done with numpy that is the decoding's one or
two passes, five more (the cast into the bucket, the multiply, the subtraction, the move's difference,
its square; six under a GradScaler, whose division is one more) and a sum per parameter; at several
million parameters those passes over memory were most of the hook's time. :func:`settle_rows` makes
one pass, with the same IEEE operations in the same order: the mean as the quantizer's ``decode``
writes it, x~ and each sum as numpy's operations give them (a sum in numpy's pairwise order, the
squares computed where the order visits them, as :mod:`mpiopt.kernels.numba` does for IntSGD's Alg. 2).
Under the rules that read no x~ (exponent, constant) :func:`decode_rows` only decodes into the bucket.
"""

import numpy as np

from mpiopt.kernels.numba import _jit, leaf_sum, pairwise_next, pairwise_scratch, pairwise_start, product_is_decode


@_jit
def _settle(lo, n, s, mean, decoded, one, mul, a, c, r, inv_n, lr, scale, x, nxt, out, walk, sums, sq):
    """Coordinates [lo, lo + n) of a row: each mean m (read, or decoded from the sum s as the quantizer's
    ``decode`` writes it: S * r or S / c with one alpha, else S / a then * (1 / n)) written to out;
    x~_next = x~ - (m / scale) * lr; returns the sum of the squared moves (x~_next - x~)^2 in numpy's
    pairwise order (see :func:`mpiopt.kernels.numba.pairwise_next`), so the sum has numpy's bits. Each
    block's squares go through the scratch ``sq`` and the indices are unsigned, so that the loops
    vectorize."""
    top, depth = pairwise_start(walk, lo, n)
    while True:
        top, depth, b, m = pairwise_next(walk, sums, top, depth)
        if m < 0:
            return sums[0]
        base, count = np.uint64(b), np.uint64(m)
        if decoded:
            for j in range(count):
                sq[j] = mean[base + j]
        elif one and mul:
            for j in range(count):
                sq[j] = np.float64(s[base + j]) * r
        elif one:
            for j in range(count):
                sq[j] = np.float64(s[base + j]) / c
        else:
            for j in range(count):
                sq[j] = (np.float64(s[base + j]) / a) * inv_n
        for j in range(count):
            out[base + j] = sq[j]
        if scale != 1.0:
            for j in range(count):
                sq[j] = sq[j] / scale
        for j in range(count):
            v = x[base + j] - sq[j] * lr
            nxt[base + j] = v
            d = v - x[base + j]
            sq[j] = d * d
        sums[depth] = leaf_sum(sq, m)
        depth += 1


@_jit
def settle_rows(rows, sums, mean, decoded, alphas, one, mul, c, r, inv_n, lrs, scale, x, nxt, out, whole_sum,
                row_sums):
    """For each bucket row (position p, coordinate co, length n, block b) and i < n: m the mean of
    position p + i (``mean[p + i]`` when ``decoded``, else decoded from ``sums[p + i]`` with alpha
    ``alphas[b]``, or ``alphas[0]`` when ``one``, and the rest of the quantizer's ``decoding``
    arguments); out[p + i] = m in out's dtype; nxt[co + i] = x[co + i] - (m / scale) * lrs[b] (m itself
    when scale is 1). row_sums[k] = the row's squared moves (nxt - x)^2 added with the bits of numpy's
    ``sum`` of them (``whole_sum``) or of its ``add.reduceat`` at the row's start (the first square
    plus the pairwise sum of the rest)."""
    walk, partial, sq = pairwise_scratch()
    for k in range(rows.shape[0]):
        p, co, n, b = rows[k, 0], rows[k, 1], rows[k, 2], rows[k, 3]
        a, lr = alphas[0] if one else alphas[b], lrs[b]
        sv, mv, xv, nv, ov = sums[p:p + n], mean[p:p + n], x[co:co + n], nxt[co:co + n], out[p:p + n]
        if whole_sum:
            row_sums[k] = 0.0 + _settle(0, n, sv, mv, decoded, one, mul, a, c, r, inv_n, lr, scale, xv, nv, ov,
                                        walk, partial, sq)
        else:
            first = _settle(0, 1, sv, mv, decoded, one, mul, a, c, r, inv_n, lr, scale, xv, nv, ov, walk, partial, sq)
            if n > 1:
                first += _settle(1, n - 1, sv, mv, decoded, one, mul, a, c, r, inv_n, lr, scale, xv, nv, ov,
                                 walk, partial, sq)
            row_sums[k] = first


@_jit
def decode_rows(rows, sums, alphas, one, c, inv_n, lo, hi, out):
    """out[p + i] = the mean of position p + i decoded from ``sums`` in double as :func:`settle_rows`
    decodes it (S / c with one alpha, else S / alphas[b] then * inv_n, b the row's block), with one
    rounding to out's dtype: the hook's pass after the sum when no rule reads x~'s move. A row whose
    means a product gives exactly, checked over the sums' range [lo, hi]
    (:func:`mpiopt.kernels.numba.product_is_decode`), multiplies. (The decoding's loops are
    :func:`_settle`'s, written out again: a shared jitted helper stopped _settle's loops vectorizing,
    1.5 -> 2.3 ns a parameter.)"""
    for k in range(rows.shape[0]):
        p, n, b = rows[k, 0], rows[k, 2], rows[k, 3]
        a = alphas[0] if one else alphas[b]
        sv, ov = sums[p:p + n], out[p:p + n]
        r = 1.0 / c if one else inv_n / a
        if product_is_decode(lo, hi, one, a, c, inv_n, r, ov):
            for j in range(n):
                ov[j] = np.float64(sv[j]) * r
        elif one:
            for j in range(n):
                ov[j] = np.float64(sv[j]) / c
        else:
            for j in range(n):
                ov[j] = (np.float64(sv[j]) / a) * inv_n
