"""The DDP IntSGD hook's pass after the integer sum, fused: x~'s move and the bucket's mean written back.

After a bucket's integers are summed and decoded into its float64 mean m, the hook's engine
(:mod:`mpiopt.torch.intsgd_engine`) writes m back into the DDP bucket in the bucket's dtype, moves
IntSGD's own iterate x~_next = x~ - lr * (m / s) (s the GradScaler's scale, 1 without one) and squares
each coordinate's move for r. Done with numpy that is five passes over the bucket (the cast into the
bucket, the multiply, the subtraction, the move's difference, its square; six under a GradScaler, whose
division is one more); :func:`move_rows` makes one, with the same IEEE operations in the same order,
so x~ and the squares are the numpy code's bits (the block sums of the squares stay numpy's own ``sum``
/ ``add.reduceat``).
"""

from mpiopt.kernels.numba import _jit


@_jit
def move_rows(rows, lrs, mean, scale, x, nxt, squares, out, write):
    """For each bucket row (position p, coordinate c, length n, block b) and i < n, with
    m = mean[p + i]: out[p + i] = m in out's dtype (when ``write``); nxt[c + i] = x[c + i] - (m / scale)
    * lrs[b] (m itself when scale is 1); squares[p + i] = (nxt[c + i] - x[c + i])^2."""
    scaled = scale != 1.0
    for k in range(rows.shape[0]):
        p, c, n, b = rows[k, 0], rows[k, 1], rows[k, 2], rows[k, 3]
        lr = lrs[b]
        for i in range(n):
            m = mean[p + i]
            if write:
                out[p + i] = m
            if scaled:
                m = m / scale
            v = x[c + i] - m * lr
            nxt[c + i] = v
            d = v - x[c + i]
            squares[p + i] = d * d
