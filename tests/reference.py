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


def envelope(x, raw, size, mode="zeros"):
    """Smooth each channel of x (N, C, H, W) with its separable kernel via scipy.ndimage.correlate1d."""
    x = np.asarray(x, dtype=np.float64)
    k = kernel1d(raw, size)
    if k.shape[0] == 1:
        k = np.repeat(k, x.shape[1], axis=0)
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        t = ndimage.correlate1d(x[:, c], k[c], axis=-1, mode=SCIPY_MODES[mode], cval=0.0)
        out[:, c] = ndimage.correlate1d(t, k[c], axis=-2, mode=SCIPY_MODES[mode], cval=0.0)
    return out


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


def envelope_strided(x, raw, size, mode="zeros", stride=(1, 1)):
    """The envelope at every stride-th pixel, per channel Y_c = A_h X_c A_w^T (float64 numpy)."""
    x = np.asarray(x, dtype=np.float64)
    k = kernel1d(raw, size)
    k = np.repeat(k, x.shape[1], axis=0) if k.shape[0] == 1 else k
    n, c, h, w = x.shape
    out = []
    for ch in range(c):
        a_h, a_w = pass_matrix(k[ch], h, mode, stride[0]), pass_matrix(k[ch], w, mode, stride[1])
        out.append(np.einsum("ab,nbc,dc->nad", a_h, x[:, ch], a_w))
    return np.stack(out, 1)


def envelope_vjp(x, raw, size, gy, mode="zeros", stride=(1, 1), eps=1e-6):
    """(dL/dx, dL/draw) of L = sum(gy * envelope): the transposed matrices for x, central differences for raw."""
    x, gy = np.asarray(x, dtype=np.float64), np.asarray(gy, dtype=np.float64)
    raw = np.atleast_1d(np.asarray(raw, dtype=np.float64))
    k = kernel1d(raw, size)
    k = np.repeat(k, x.shape[1], axis=0) if k.shape[0] == 1 else k
    n, c, h, w = x.shape
    gx = np.empty_like(x)
    for ch in range(c):
        a_h, a_w = pass_matrix(k[ch], h, mode, stride[0]), pass_matrix(k[ch], w, mode, stride[1])
        gx[:, ch] = np.einsum("ab,nac,cd->nbd", a_h, gy[:, ch], a_w)
    graw = np.empty_like(raw)
    for i in range(raw.shape[0]):
        xs, gys, raws, at = _moved_by(x, gy, raw, (i,))
        up, down = raws.copy(), raws.copy()
        up[at] += eps
        down[at] -= eps
        diff = envelope_strided(xs, up, size, mode, stride) - envelope_strided(xs, down, size, mode, stride)
        graw[i] = (gys * diff).sum() / (2 * eps)
    return gx, graw


def _moved_by(x, gy, raw, index):
    """What raw[index] moves: every channel for a shared sigma, else only its own channel (O(C) differences).

    Returns (x, gy, raw) cut to those channels and the index of the entry inside the cut raw.
    """
    if raw.shape[0] == 1:
        return x, gy, raw, index
    c = index[0]
    return x[:, c:c + 1], gy[:, c:c + 1], raw[c:c + 1], (0, *index[1:])


def envelope_nd(x, raw, size, mode="zeros", stride=None):
    """The separable envelope of x (N, C, *spatial) by scipy: along each spatial axis its own 1-D kernel.

    ``raw``: (C,) or (1,) - one sigma per channel for every axis - or (C, n) / (1, n), a column
    per spatial axis; ``size``: one for every axis or one per axis. Then every ``stride``-th
    sample of each axis.
    """
    x = np.asarray(x, dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    dims = x.ndim - 2
    columns = [raw] * dims if raw.ndim == 1 else [raw[:, a] for a in range(dims)]
    sizes = _sizes(size, dims)
    out = x.copy()
    for axis, column in enumerate(columns):
        k = kernel1d(column, sizes[axis])
        k = np.repeat(k, x.shape[1], axis=0) if k.shape[0] == 1 else k
        for c in range(x.shape[1]):  # axes of out[:, c]: 0 is the batch
            out[:, c] = ndimage.correlate1d(out[:, c], k[c], axis=axis + 1, mode=SCIPY_MODES[mode], cval=0.0)
    stride = stride or [1] * dims
    return out[(..., *(slice(None, None, s) for s in stride))]


def _sizes(size, dims):
    return [size] * dims if isinstance(size, int) else list(size)


def envelope_nd_vjp(x, raw, size, gy, mode="zeros", stride=None, eps=1e-6):
    """(dL/dx, dL/draw) of L = sum(gy * envelope_nd) in N-D, raw (C,), (1,), (C, n) or (1, n).

    dL/dx: every axis's transposed pass matrix applied to gy; dL/draw: central differences of
    :func:`envelope_nd`, one entry of ``raw`` at a time.
    """
    x, gy = np.asarray(x, dtype=np.float64), np.asarray(gy, dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    dims = x.ndim - 2
    stride = stride or [1] * dims
    columns = [raw] * dims if raw.ndim == 1 else [raw[:, a] for a in range(dims)]
    sizes = _sizes(size, dims)
    gx = np.empty_like(x)
    for c in range(x.shape[1]):
        g = gy[:, c]
        for a, column in enumerate(columns):  # out = A_1 (... A_n x): the adjoint applies each A^T
            k = kernel1d(column, sizes[a])
            k = k[0] if k.shape[0] == 1 else k[c]
            m = pass_matrix(k, x.shape[2 + a], mode, stride[a])
            g = np.moveaxis(np.tensordot(m, g, axes=([0], [1 + a])), 0, 1 + a)
        gx[:, c] = g
    graw = np.empty_like(raw)
    for index in np.ndindex(raw.shape):
        xs, gys, raws, at = _moved_by(x, gy, raw, index)
        up, down = raws.copy(), raws.copy()
        up[at] += eps
        down[at] -= eps
        diff = envelope_nd(xs, up, size, mode, stride) - envelope_nd(xs, down, size, mode, stride)
        graw[index] = (gys * diff).sum() / (2 * eps)
    return gx, graw
