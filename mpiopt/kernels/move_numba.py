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
"""

import numpy as np

from mpiopt.kernels.numba import _jit


@_jit
def _leaf(lo, n, s, mean, decoded, one, mul, a, c, r, inv_n, lr, scale, x, nxt, out, sq):
    """Coordinates [lo, lo + n) of a row, n <= 128: each mean m (read, or decoded from the sum s as the
    quantizer's ``decode`` writes it: S * r or S / c with one alpha, else S / a then * (1 / n)) written
    to out; x~_next = x~ - (m / scale) * lr; returns the sum of the squared moves (x~_next - x~)^2 in
    numpy's order for such a block: 8 interleaved partial sums (a plain loop below 8). The squares go
    through the scratch ``sq`` and the indices are unsigned, so that the loops vectorize."""
    base, count = np.uint64(lo), np.uint64(n)
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
    if n < 8:
        res = -0.0
        for j in range(n):
            res += sq[j]
        return res
    r0, r1, r2, r3, r4, r5, r6, r7 = sq[0], sq[1], sq[2], sq[3], sq[4], sq[5], sq[6], sq[7]
    i = 8
    end8 = n - n % 8
    while i < end8:
        r0 += sq[i]
        r1 += sq[i + 1]
        r2 += sq[i + 2]
        r3 += sq[i + 3]
        r4 += sq[i + 4]
        r5 += sq[i + 5]
        r6 += sq[i + 6]
        r7 += sq[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += sq[i]
        i += 1
    return res


@_jit
def _pairwise(lo, n, s, mean, decoded, one, mul, a, c, r, inv_n, lr, scale, x, nxt, out, sq, todo_lo, todo_n,
              todo_joined, sums):
    """The sum of the squared moves of [lo, lo + n) (see _leaf), added in numpy's pairwise order (its
    ``add.reduce`` of a contiguous float64 array: blocks of at most 128 as in _leaf, longer ranges split
    in halves at a multiple of 8 and their sums added), so the sum has numpy's bits. The halves are
    walked with a stack (``todo_*``, ``sums``: 128 entries), not by recursion (numba's cache cannot
    reload a recursive function of these arguments)."""
    top, depth = 0, 0
    todo_lo[0], todo_n[0], todo_joined[0] = lo, n, False
    while top >= 0:
        b, m, joined = todo_lo[top], todo_n[top], todo_joined[top]
        top -= 1
        if joined:  # both halves done: left + right
            depth -= 1
            sums[depth - 1] = sums[depth - 1] + sums[depth]
        elif m <= 128:
            sums[depth] = _leaf(b, m, s, mean, decoded, one, mul, a, c, r, inv_n, lr, scale, x, nxt, out, sq)
            depth += 1
        else:
            half = m // 2
            half -= half % 8
            todo_lo[top + 1], todo_n[top + 1], todo_joined[top + 1] = b, m, True
            todo_lo[top + 2], todo_n[top + 2], todo_joined[top + 2] = b + half, m - half, False
            todo_lo[top + 3], todo_n[top + 3], todo_joined[top + 3] = b, half, False
            top += 3
    return sums[0]


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
    sq, partial = np.empty(128), np.empty(128)
    todo_lo, todo_n, todo_joined = np.empty(128, np.int64), np.empty(128, np.int64), np.empty(128, np.bool_)
    for k in range(rows.shape[0]):
        p, co, n, b = rows[k, 0], rows[k, 1], rows[k, 2], rows[k, 3]
        a, lr = alphas[0] if one else alphas[b], lrs[b]
        sv, mv, xv, nv, ov = sums[p:p + n], mean[p:p + n], x[co:co + n], nxt[co:co + n], out[p:p + n]
        if whole_sum:
            row_sums[k] = 0.0 + _pairwise(0, n, sv, mv, decoded, one, mul, a, c, r, inv_n, lr, scale, xv, nv, ov, sq,
                                          todo_lo, todo_n, todo_joined, partial)
        else:
            first = _leaf(0, 1, sv, mv, decoded, one, mul, a, c, r, inv_n, lr, scale, xv, nv, ov, sq)
            if n > 1:
                first += _pairwise(1, n - 1, sv, mv, decoded, one, mul, a, c, r, inv_n, lr, scale, xv, nv, ov, sq,
                                   todo_lo, todo_n, todo_joined, partial)
            row_sums[k] = first
