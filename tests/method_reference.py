"""Slow, direct references of the comparison methods, written from the paper's equations.

numpy, float64, explicit loops over output positions; no envconv or torch code.
"""

import numpy as np

import reference as ref


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def pad_zeros(x, p):
    return np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))


def out_size(h, k, s, p, d):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, gate=None):
    """Y[n,d,i,j] = sum_c gate[n,c,i,j] * sum_{u,v} w[d,c',u,v] x[n,c,i*s+u*dl, j*s+v*dl] (+ b[d]).

    ``gate`` (optional, shape (N, C, Ho, Wo)) multiplies input channel c's contribution (eq. (16)).
    """
    n, c, h, wd = x.shape
    dd, cg, kh, kw = w.shape
    ho, wo = out_size(h, kh, stride[0], padding[0], dilation[0]), out_size(wd, kw, stride[1], padding[1], dilation[1])
    xp = pad_zeros(x, padding)
    y = np.zeros((n, dd, ho, wo))
    for d in range(dd):
        g = d // (dd // groups)
        for i in range(ho):
            for j in range(wo):
                for ci in range(cg):
                    cin = g * cg + ci
                    acc = np.zeros(n)
                    for u in range(kh):
                        for v in range(kw):
                            acc += w[d, ci, u, v] * xp[:, cin, i * stride[0] + u * dilation[0],
                                                        j * stride[1] + v * dilation[1]]
                    if gate is not None:
                        acc = acc * gate[:, cin, i, j]
                    y[:, d, i, j] += acc
    if b is not None:
        y += b[None, :, None, None]
    return y


def avg_pool_at(x, k, stride, out_hw):
    """k x k mean of x (zeros outside, divided by k^2) centred on (i*s, j*s)."""
    n, c, h, w = x.shape
    r = k // 2
    out = np.zeros((n, c) + tuple(out_hw))
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            total = np.zeros((n, c))
            for u in range(-r, r + 1):
                for v in range(-r, r + 1):
                    y, xx = i * stride[0] + u, j * stride[1] + v
                    if 0 <= y < h and 0 <= xx < w:
                        total += x[:, :, y, xx]
            out[:, :, i, j] = total / k**2
    return out


def depthwise2d(x, kernels):
    """Per-channel 2-D correlation with zero padding: kernels (C, k, k)."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    r = k // 2
    xp = pad_zeros(x, (r, r))
    out = np.zeros_like(x)
    for u in range(k):
        for v in range(k):
            out += kernels[None, :, u, v, None, None] * xp[:, :, u : u + h, v : v + w]
    return out


def separable(x, kx, ky):
    """Per-channel 1-D kx along the width, then ky along the height (kernels (C, k))."""
    return depthwise2d(x, ky[:, :, None] * kx[:, None, :])


def proj(x, w, b, w_proj, conv_kw, pool):
    y = conv2d(x, w, b, **conv_kw)
    pooled = avg_pool_at(x, pool, conv_kw["stride"], y.shape[-2:])
    return y + w_proj[None, :, None, None] * pooled.mean(1, keepdims=True)


def local_se(x, w, b, alpha, conv_kw, pool):
    y0 = conv2d(x, w, None, **conv_kw)
    pooled = avg_pool_at(x, pool, conv_kw["stride"], y0.shape[-2:])
    return conv2d(x, w, b, gate=sigmoid(alpha[None, :, None, None] * pooled), **conv_kw)


def multiplicative(x, w, b, raw, conv_kw):
    s2 = ref.sigma2(raw)
    kh, kw = w.shape[-2:]
    u = np.arange(kh) - (kh - 1) / 2
    v = np.arange(kw) - (kw - 1) / 2
    dd, cg = w.shape[:2]
    groups = conv_kw.get("groups", 1)
    w2 = w.copy()
    for d in range(dd):
        for ci in range(cg):
            cin = (d // (dd // groups)) * cg + ci
            w2[d, ci] *= np.exp(-(u[:, None] ** 2 + v[None, :] ** 2) / (2 * s2[cin]))
    return conv2d(x, w2, b, **conv_kw)


def param_attention(x, logits):
    c, k, _ = logits.shape
    e = np.exp(logits.reshape(c, -1) - logits.reshape(c, -1).max(1, keepdims=True))
    return depthwise2d(x, (e / e.sum(1, keepdims=True)).reshape(c, k, k))


def adaptive_attention(x, w_c, w_n, k):
    """Eqs. (13)-(14) position by position, neighbours outside the image left out."""
    n, c, h, w = x.shape
    r = k // 2
    out = np.zeros_like(x)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                nbrs = [(i + u, j + v) for u in range(-r, r + 1) for v in range(-r, r + 1)
                        if 0 <= i + u < h and 0 <= j + v < w]
                logits = np.array([w_c @ x[b, :, i, j] + w_n @ x[b, :, y, xx] for y, xx in nbrs])
                a = np.exp(logits - logits.max())
                a /= a.sum()
                out[b, :, i, j] = sum(ai * x[b, :, y, xx] for ai, (y, xx) in zip(a, nbrs))
    return out


def gaussian1d(sigma, size):
    """Eq. (9) kernel for a given sigma (sigma = 0: the delta)."""
    r = size // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    if sigma == 0:
        return (x == 0).astype(np.float64)
    e = np.exp(-(x**2) / (2 * sigma**2))
    return e / e.sum()


def ensemble(x, scales, size, bn_weight, bn_bias, eps=1e-5):
    """Sum over scales of BatchNorm (training mode: batch statistics) of each fixed Gaussian response."""
    n, c, h, w = x.shape
    m = len(scales)
    out = np.zeros_like(x)
    for i, s in enumerate(scales):
        k = np.repeat(gaussian1d(s, size)[None], c, axis=0)
        y = separable(x, k, k)
        mean = y.mean(axis=(0, 2, 3), keepdims=True)
        var = y.var(axis=(0, 2, 3), keepdims=True)
        idx = np.arange(c) * m + i  # BN channel of (channel c, scale i)
        out += (y - mean) / np.sqrt(var + eps) * bn_weight[idx][None, :, None, None] + bn_bias[idx][None, :, None, None]
    return out
