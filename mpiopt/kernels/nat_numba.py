"""The numba codec of the ``nat`` compressor (:mod:`mpiopt.compressors.nat`): its bytes and mean, bit
for bit, in two compiled passes where the numpy code makes about thirty.

* :func:`encode`: one pass for the largest exponent, one that writes each coordinate's byte, with
  the rounding noise u_j drawn in the loop from the counter-based stream (the numba quantizer's
  ``_u``: the same u_j as ``Quantizer.noise``), never materialized, and frexp's exponent and mantissa
  read from the bits of normal values;
* :func:`decode_mean`: every rank's bytes to +-2^(E_r - o), built from their bits, added row by row
  in worker order (the float64 additions ``sum_rows`` makes), times 1 / n, with this rank's own
  decoded row where DIANA asks for it; no n x d matrix.
"""

import math

import numpy as np

from mpiopt.kernels.numba import _G, _bits, _from_bits, _jit, _u, _unit

ZERO = 127
SPAN = 126
_FRAC = np.int64((1 << 52) - 1)
_ONE = np.int64(1023 << 52)


@_jit
def _top_exponent(v):
    """frexp's exponent of max |v| over the finite values (0 when none is > 0); whether all are finite."""
    m = np.int64(0)
    bad = 0
    for j in range(v.shape[0]):  # an integer max of the bits (they order like |v|): it vectorizes
        a = abs(v[j])
        ok = a < np.inf
        m = max(m, _bits(a) if ok else np.int64(0))
        bad += not ok
    top = _from_bits(m)
    return (math.frexp(top)[1] if top > 0 else 0), bad == 0


@_jit
def _signed(code, x):
    return code + 128 if code != ZERO and _bits(np.float64(x)) < 0 else code


@_jit
def encode(v, key, send):
    """send[:d] = nat's bytes of v for the noise stream ``key``; returns (E, whether v was finite).

    One branch-free pass codes the normal |v_j| >= 2^(E - 126), reading frexp's exponent and 2 m - 1
    (m the mantissa) from the bits, and zeros; the rare others (subnormal, or below 2^(E - 126)) get
    a second pass by frexp and ldexp, only when there are any."""
    top, finite = _top_exponent(v)
    low = top - SPAN
    rare = 0
    z = key
    for j in range(v.shape[0]):
        z += _G  # u_j's counter key + (j + 1) G, stepped (no 64-bit multiply per vector)
        a = abs(v[j])
        a = a if a < np.inf else 0.0
        b = _bits(a)
        ex = (b >> 52) - 1022
        normal = (b >> 52 > 0) & (ex > low)
        up = _unit(z) < _from_bits((b & _FRAC) | _ONE) - 1.0
        code = top + 1 - ex - up if normal else ZERO
        rare += (not normal) & (a != 0.0)
        send[j] = _signed(code, v[j])
    if rare:
        for j in range(v.shape[0]):
            a = abs(v[j])
            if not (a < np.inf and a != 0.0):
                continue
            mant, ex = math.frexp(a)
            if ex > low and _bits(a) >> 52 > 0:
                continue
            u = _u(key, j)
            if ex <= low:
                code = SPAN if u < math.ldexp(a, -low) else ZERO
            else:
                code = top + 1 - ex - (1 if u < mant * 2.0 - 1.0 else 0)
            send[j] = _signed(code, v[j])
    return top, finite


@_jit
def _value(code, top):
    e = code & 127
    x = 0.0 if e == ZERO else math.ldexp(1.0, top - e)
    return -x if code >= 128 else x


@_jit
def _add_row(codes, top, out, first):
    """out (= or +=) one rank's values: from their bits where every 2^(E - o) is a normal double
    (E in [-896, 1023]), else by ldexp."""
    if -1022 + SPAN <= top <= 1023:
        for j in range(out.shape[0]):
            c = np.int64(codes[j])
            e = c & 127
            x = _from_bits(((top - e + 1023) << 52) * (e != ZERO) | ((c >> 7) << 63))
            out[j] = x if first else out[j] + x
    else:
        for j in range(out.shape[0]):
            x = _value(codes[j], top)
            out[j] = x if first else out[j] + x


@_jit
def decode_mean(codes, tops, order, inv_n, out, mine, local):
    """out = (sum over ranks r in ``order`` of rank r's values) * inv_n, the additions in that order;
    ``local`` (when not empty) = rank ``mine``'s values. ``codes``: the n x (d + 4) messages,
    ``tops``: each rank's E."""
    d = out.shape[0]
    for i in range(order.shape[0]):
        r = order[i]
        _add_row(codes[r, :d], tops[r], out, i == 0)
    for j in range(d):
        out[j] = out[j] * inv_n
    if local.shape[0] > 0:
        _add_row(codes[mine, :d], tops[mine], local, True)

def warm_up() -> None:
    """Compile (or load from numba's cache) the codec before any timed step."""
    v = np.array([1.5, -0.25, 0.0, 3.0e-40, np.inf])
    send = np.zeros(v.size + 4, dtype=np.uint8)
    top, _ = encode(v, np.uint64(1), send)
    codes = np.stack([send, send])
    decode_mean(codes, np.array([top, top], dtype=np.int64), np.array([1, 0], dtype=np.int64), 0.5,
                np.empty(v.size), 0, np.empty(v.size))
    decode_mean(codes, np.array([top, top], dtype=np.int64), np.array([1, 0], dtype=np.int64), 0.5,
                np.empty(v.size), 0, np.empty(0))
