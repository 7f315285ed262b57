"""DIANA's shift around the int compressor, fused with the numba quantizer's passes.

A DIANA step with IntSGD's integers (IntDIANA, VR-IntDIANA) reads and writes the shift vectors h_i
and h, the iterate x and the mean around one integer exchange. Done with numpy, that is nine passes
over vectors of length d besides the rounding: Delta = g - h_i, max |Delta| per alpha block, the
decoded mean and this rank's own C(Delta), g = h + mean, the shifts' two updates, eta g and
x -= eta g. Here it is two:

* :func:`shift_delta`: Delta = g - h_i and each block's max |Delta| (what the fill rule and the
  exponent first step read) in one pass, g given as an array or as L-SVRG's three terms
  g = (a - b) + c (VR-IntDIANA), so the estimator's two additions join that pass; with DIANA's
  feedback, Delta = g - (h_i - e_i), e_i the rank's carried compression error;
* :func:`shift_update`: after the integer sum S, per coordinate m = S / (n alpha) (the numba
  quantizer's ``decode``), l = clip(Q) / alpha (its ``decode_local``), g = h + m, h_i += l, h += m,
  x -= eta g: the same IEEE operations in the same order as the numpy sequence, so the iterates are
  the same bits (and, with the feedback, e_i = Delta - l, numpy's subtraction). (The int compressor's
  omega is 0, so DIANA's shift step 1 / (1 + omega) is 1.)
  :func:`shift_update_move` does the same with one alpha block and also sums x's squared move for the
  paper's alpha at the next step (IntDIANA's default).

Any other compressor with the numba kernel (nat, qsgd, hint) takes :func:`shift_delta` (one block)
before its exchange and :func:`shift_update_decoded` after it: g = h + m, h_i += a l, h += a m,
x -= eta g from its decoded mean m and local l, a = 1 / (1 + omega).

The arrays are in the quantizer's layout (positions), alpha per block or per coordinate as the
quantizer's other kernels take them (see :mod:`mpiopt.kernels.numba`).
"""

import numpy as np

from mpiopt.kernels.numba import (_ABS, _bits, _coord_view, _from_bits, _jit, leaf_sum, pairwise_next,
                                  pairwise_scratch, pairwise_start)


@_jit
def _shift_delta_run(ga, gb, gc, h, e, out, m, terms, fed):
    for i in range(ga.shape[0]):  # branch-free (an integer max of the bits), so it vectorizes
        d = (((ga[i] - gb[i]) + gc[i]) if terms else ga[i]) - ((h[i] - e[i]) if fed else h[i])
        out[i] = d
        m = max(m, _bits(np.float64(d)) & _ABS)
    return m


@_jit
def shift_delta(ga, gb, gc, h, segs, out, peak, terms, e, fed):
    """out = g - h with g = ``ga`` or, when ``terms``, L-SVRG's g = (ga - gb) + gc (added in the
    estimator's order), and with the feedback (``fed``) out = g - (h - e); peak[block] = max |out| over
    each block (NaN or inf when a value is not finite). ``e`` is read only when ``fed``."""
    peak[:] = 0.0
    for k in range(segs.shape[0]):
        p, n, b = segs[k, 0], segs[k, 2], segs[k, 3]
        ev = e[p:p + n] if fed else h[p:p + n]
        peak[b] = _from_bits(_shift_delta_run(ga[p:p + n], gb[p:p + n], gc[p:p + n], h[p:p + n], ev, out[p:p + n],
                                              _bits(peak[b]), terms, fed))


@_jit
def _shift_update_run(s, a, avec, one, c, r, mul, inv_n, src, bound, h_local, h, x, lr, delta, e, fed):
    coord = avec.shape[0] > 0
    T = h.dtype.type
    for i in range(s.shape[0]):
        if one and mul:
            m = T(np.float64(s[i]) * r)
        elif one:
            m = T(np.float64(s[i]) / c)
        else:
            m = T(np.float64(s[i]) / (avec[i] if coord else a))
            m = m * inv_n
        loc = T(min(max(np.float64(src[i]), -bound), bound) / (avec[i] if coord else a))
        if fed:
            e[i] = delta[i] - loc
        g = h[i] + m
        h_local[i] = h_local[i] + loc
        h[i] = h[i] + m
        g = g * lr
        x[i] = x[i] - g


@_jit
def shift_update(s, segs, alphas, avec, one, c, r, mul, inv_n, src, bound, h_local, h, x, lr, delta, e, fed):
    """The DIANA update after the integer sum ``s`` (see the module docstring); ``src`` this rank's
    exact integers, ``bound`` what they were clipped to, ``lr`` in h's dtype; with the feedback
    (``fed``) also e = ``delta`` - C(delta), this rank's error carried into its next Delta (``delta``
    and ``e`` are read and written only when ``fed``)."""
    for k in range(segs.shape[0]):
        p, ctr, n = segs[k, 0], segs[k, 1], segs[k, 2]
        dv, ev = (delta[p:p + n], e[p:p + n]) if fed else (h[p:p + n], h[p:p + n])
        _shift_update_run(s[p:p + n], alphas[segs[k, 3]], _coord_view(avec, ctr, n), one, c, r, mul, inv_n,
                          src[p:p + n], bound, h_local[p:p + n], h[p:p + n], x[p:p + n], lr, dv, ev, fed)


@_jit
def shift_update_move(s, mul, c, r, a, src, bound, h_local, h, x, x_prev, lr, delta, e, fed):
    """:func:`shift_update` with one alpha ``a`` over the whole of the arrays (the plain layout), and
    x_prev = x as it was; returns the sum of the squared moves (x_new - x_old)^2 in double, in numpy's
    pairwise order (the paper's alpha at the next step reads it instead of a pass of its own; see
    the numba quantizer's ``decode_update_move``)."""
    T = h.dtype.type
    walk, sums, sq = pairwise_scratch()
    top, depth = pairwise_start(walk, 0, x.shape[0])
    while True:
        top, depth, b, n = pairwise_next(walk, sums, top, depth)
        if n < 0:
            return 0.0 + sums[0]  # 0.0 +: numpy's sum of none is +0.0
        base, count = np.uint64(b), np.uint64(n)
        for j in range(count):
            i = base + j
            m = T(np.float64(s[i]) * r) if mul else T(np.float64(s[i]) / c)
            loc = T(min(max(np.float64(src[i]), -bound), bound) / a)
            if fed:
                e[i] = delta[i] - loc
            g = h[i] + m
            h_local[i] = h_local[i] + loc
            h[i] = h[i] + m
            g = g * lr
            old = x[i]
            new = old - g
            x_prev[i] = old
            x[i] = new
            t = np.float64(new) - np.float64(old)
            sq[j] = t * t
        sums[depth] = leaf_sum(sq, n)
        depth += 1


@_jit
def shift_update_decoded(mean, local, h_local, h, x, lr, a):
    """DIANA's update from a decoded mean and local C(Delta_i) (any unbiased compressor): g = h + mean,
    h_i += a local, h += a mean, x -= lr g, per coordinate (``lr`` and ``a`` in h's dtype)."""
    for j in range(h.shape[0]):
        m = mean[j]
        g = h[j] + m
        h_local[j] = h_local[j] + local[j] * a
        h[j] = h[j] + m * a
        x[j] = x[j] - g * lr

