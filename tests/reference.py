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
