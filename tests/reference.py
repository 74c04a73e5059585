"""Independent references for the envelope, in numpy/scipy (no envconv code)."""

import numpy as np
from scipy import ndimage

#: envconv padding mode -> scipy.ndimage boundary mode
SCIPY_MODES = {"zeros": "constant", "reflect": "mirror", "replicate": "nearest", "circular": "wrap"}


def sigma2(raw):
    """softplus, computed stably in float64."""
    raw = np.asarray(raw, dtype=np.float64)
    return np.logaddexp(0.0, raw)


def kernel1d(raw, size):
    """Eq. (9): exp(-x^2 / 2 s2) / sum over x = -r..r, one row per raw value."""
    r = size // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    s2 = np.atleast_1d(sigma2(raw))[:, None]
    w = np.exp(-(x**2) / (2 * s2))
    return w / w.sum(axis=1, keepdims=True)


def _source_index(i, n, mode):
    """The input index an out-of-range tap index ``i`` reads in ``mode`` (None: a zero)."""
    if 0 <= i < n:
        return i
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(i, 0), n - 1)
    if mode == "circular":
        return i % n
    return -i if i < 0 else 2 * (n - 1) - i  # reflect (scipy's "mirror")


def pass_matrix(kernel, n, mode="zeros", stride=1):
    """The 1-D pass as a matrix A (ceil(n / stride), n): out = A @ in, with kernel (k,) and padding ``mode``."""
    r = len(kernel) // 2
    rows = (n - 1) // stride + 1
    a = np.zeros((rows, n))
    for o in range(rows):
        for j, weight in enumerate(kernel):
            i = _source_index(o * stride + j - r, n, mode)
            if i is not None:
                a[o, i] += weight
    return a


def _moved_by(x, gy, raw, index):
    """What raw[index] moves: every channel for a shared sigma, else only its own channel (O(C) differences).

    Returns (x, gy, raw) cut to those channels and the index of the entry inside the cut raw.
    """
    if raw.shape[0] == 1:
        return x, gy, raw, index
    c = index[0]
    return x[:, c:c + 1], gy[:, c:c + 1], raw[c:c + 1], (0, *index[1:])


def envelope(x, raw, size, mode="zeros", stride=None):
    """The separable envelope of x (N, C, *spatial) by scipy: along each spatial axis its own 1-D kernel.

    ``raw``: (C,) or (1,) - one sigma per channel for every axis - or (C, n) / (1, n), a column
    per spatial axis; ``size``: one for every axis or one per axis. Then every ``stride``-th
    sample of each axis.
    """
    x = np.asarray(x, dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    dims = x.ndim - 2
    sizes = _sizes(size, dims)
    out = x.copy()
    for axis, column in enumerate(_columns(raw, dims)):
        k = kernel1d(column, sizes[axis])
        k = np.repeat(k, x.shape[1], axis=0) if k.shape[0] == 1 else k
        for c in range(x.shape[1]):  # axes of out[:, c]: 0 is the batch
            out[:, c] = ndimage.correlate1d(out[:, c], k[c], axis=axis + 1, mode=SCIPY_MODES[mode], cval=0.0)
    stride = stride or [1] * dims
    return out[(..., *(slice(None, None, s) for s in stride))]


def _sizes(size, dims):
    return [size] * dims if isinstance(size, int) else list(size)


def _columns(raw, dims):
    return [raw] * dims if raw.ndim == 1 else [raw[:, a] for a in range(dims)]


def _passes(t, raw, size, mode, stride, spatial, adjoint=False):
    """Each channel of t through every axis's pass matrix (:func:`pass_matrix`) of an input of ``spatial``
    sizes, or through their transposes (the adjoint: t is then the output's gradient)."""
    raw = np.asarray(raw, dtype=np.float64)
    dims = len(spatial)
    stride, sizes = stride or [1] * dims, _sizes(size, dims)
    out = []
    for c in range(t.shape[1]):
        g = t[:, c]
        for a, column in enumerate(_columns(raw, dims)):
            k = kernel1d(column, sizes[a])
            m = pass_matrix(k[0] if k.shape[0] == 1 else k[c], spatial[a], mode, stride[a])
            g = np.moveaxis(np.tensordot(m.T if adjoint else m, g, axes=([1], [1 + a])), 0, 1 + a)
        out.append(g)
    return np.stack(out, 1)


def envelope_by_matrices(x, raw, size, mode="zeros", stride=None):
    """:func:`envelope` computed another way: per channel, the product of every axis's pass matrix with x."""
    x = np.asarray(x, dtype=np.float64)
    return _passes(x, raw, size, mode, stride, x.shape[2:])


def envelope_vjp(x, raw, size, gy, mode="zeros", stride=None, eps=1e-6):
    """(dL/dx, dL/draw) of L = sum(gy * envelope) in N-D, raw (C,), (1,), (C, n) or (1, n).

    dL/dx: every axis's transposed pass matrix applied to gy; dL/draw: central differences of
    :func:`envelope`, one entry of ``raw`` at a time.
    """
    x, gy = np.asarray(x, dtype=np.float64), np.asarray(gy, dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    gx = _passes(gy, raw, size, mode, stride, x.shape[2:], adjoint=True)
    graw = np.empty_like(raw)
    for index in np.ndindex(raw.shape):
        xs, gys, raws, at = _moved_by(x, gy, raw, index)
        up, down = raws.copy(), raws.copy()
        up[at] += eps
        down[at] -= eps
        diff = envelope(xs, up, size, mode, stride) - envelope(xs, down, size, mode, stride)
        graw[index] = (gys * diff).sum() / (2 * eps)
    return gx, graw
