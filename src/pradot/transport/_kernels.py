"""Sources of the numba CPU kernels (plain Python, compiled by :func:`._cpu._numba_kernels` on first use)."""

from __future__ import annotations

import numpy as np


def _fused_rows_py(K, v, a, u, acc):  # pragma: no cover - compiled by numba
    """u_i = a / (K_i . v) and acc += u_i K_i for the rows of K, four rows per sweep over the columns.

    Each row is read from memory once (the second use hits the cache), which halves the memory traffic
    of ``u = a / (K v); K^T u``. ``a`` must have K's dtype (float32 stays float32).
    """
    n, P = K.shape
    zero = a - a
    i = 0
    while i + 4 <= n:
        r0 = K[i]
        r1 = K[i + 1]
        r2 = K[i + 2]
        r3 = K[i + 3]
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        for j in range(P):
            vj = v[j]
            s0 += r0[j] * vj
            s1 += r1[j] * vj
            s2 += r2[j] * vj
            s3 += r3[j] * vj
        u0 = a / s0
        u1 = a / s1
        u2 = a / s2
        u3 = a / s3
        u[i] = u0
        u[i + 1] = u1
        u[i + 2] = u2
        u[i + 3] = u3
        for j in range(P):
            acc[j] += u0 * r0[j] + u1 * r1[j] + u2 * r2[j] + u3 * r3[j]
        i += 4
    while i < n:
        r0 = K[i]
        s0 = zero
        for j in range(P):
            s0 += r0[j] * v[j]
        u0 = a / s0
        u[i] = u0
        for j in range(P):
            acc[j] += u0 * r0[j]
        i += 1


def _scale_py(K, u, v, colsum):  # pragma: no cover - compiled by numba
    """K <- diag(u) K diag(v) in place, and colsum += its column sums (one pass)."""
    n, P = K.shape
    for i in range(n):
        r = K[i]
        ui = u[i]
        for j in range(P):
            x = (r[j] * ui) * v[j]
            r[j] = x
            colsum[j] += x


def _affine_py(M, f, g, eps, K):  # pragma: no cover - compiled by numba
    """K_ij = ((g_j - M_ij) + f_i) / eps (the exponent of the kernel, in torch's order of operations)."""
    n, P = M.shape
    for i in range(n):
        m = M[i]
        k = K[i]
        fi = f[i]
        for j in range(P):
            k[j] = ((g[j] - m[j]) + fi) / eps


def _colmin_py(M, f, out):  # pragma: no cover - compiled by numba
    """out_j = min(out_j, min_i (M_ij - f_i))."""
    n, P = M.shape
    for i in range(n):
        m = M[i]
        fi = f[i]
        for j in range(P):
            x = m[j] - fi
            if x < out[j]:
                out[j] = x


def _dot_py(A, B, out):  # pragma: no cover - compiled by numba
    """out[0] = sum_ij A_ij B_ij, accumulated in double precision per row."""
    n, P = A.shape
    total = 0.0
    for i in range(n):
        a = A[i]
        b = B[i]
        row = 0.0
        for j in range(P):
            row += np.float64(a[j]) * np.float64(b[j])
        total += row
    out[0] = total
