"""PIL's 8-bit bilinear resize as a torch module that exports to ONNX exactly, without float64
(:class:`PILBilinearResize`, the first step of :class:`pradot.export.ExportScorer`).

Source: Pillow's ``libImaging/Resample.c`` (``precompute_coeffs``, ``normalize_coeffs_8bpc``,
``ImagingResampleHorizontal_8bpc`` / ``ImagingResampleVertical_8bpc``), checked against ``Image.resize``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["PILBilinearResize"]

#: PIL's fixed-point precision for 8-bit resampling (Resample.c: PRECISION_BITS = 32 - 8 - 2)
_PRECISION_BITS = 22
#: the base of the digits the integer coefficients are split into, so that float32 matrix products are exact
_DIGIT = 256
#: bits of the coefficients' long division per step (the remainder x 2^bits stays below 2^31)
_DIVISION_BITS = 4


def _floor_div(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    """``a // b`` of non-negative integer tensors below 2^31, exactly. The exporter writes integer division as a
    float32 division and a floor (inexact above 2^24); here that quotient, off by at most one, is corrected with
    exact integer products (``a - q b`` must lie in [0, b))."""
    q = torch.floor(a.to(torch.float32) / (b.to(torch.float32) if isinstance(b, torch.Tensor) else float(b)))
    q = q.to(a.dtype)
    q = q - (a - q * b < 0).to(a.dtype)
    return q + (a - q * b >= b).to(a.dtype)


def _pil_coefficients(n_in: torch.Tensor, n_out: int) -> torch.Tensor:
    """PIL's 8-bit bilinear resampling coefficients, exactly, in int32: an (n_out, n_in) matrix of the weights
    x 2^22 rounded half up (``precompute_coeffs`` then ``normalize_coeffs_8bpc``, Pillow's Resample.c).

    The triangle filter's weight of input pixel j for output pixel i is, with F = max(in, out) (the filter
    scale times the output size), ``max(0, 2F - |(2j + 1) out - (2i + 1) in|) / 2F``: an integer N_ij over a
    common denominator, so the normalised coefficient is ``floor(N_ij 2^22 / D_i + 1/2)``, D_i = sum_j N_ij,
    computed by long division in int32 (no float64: runtimes such as OpenVINO's CPU plugin run it in float32).
    ``n_in``: ``arange(n_in)`` of the input axis (int32). Exact while D_i < 2^26, about ``in^2 < 2^25 out``
    (an input side up to 46,000 px for out = 64, 86,000 px for out = 224)."""
    j = n_in
    size = j[-1:] + 1  # the input size as a (1,) tensor (no guard on the symbolic size)
    i = torch.arange(n_out, dtype=torch.int32, device=j.device)
    f = torch.clamp(size, min=n_out)
    num = torch.clamp(2 * f - torch.abs((2 * j[None, :] + 1) * n_out - (2 * i[:, None] + 1) * size), min=0)
    den = 2 * num.sum(dim=1, keepdim=True)  # 2 D_i: floor((N 2^23 + D) / 2D) = floor(N 2^22 / D + 1/2)
    q, r = torch.zeros_like(num), num  # r < 2D throughout
    done = 0
    while done < _PRECISION_BITS + 1:
        b = min(_DIVISION_BITS, _PRECISION_BITS + 1 - done)
        r = r * (1 << b)
        digit = _floor_div(r, den)
        q, r = q * (1 << b) + digit, r - digit * den
        done += b
    return q + (2 * r >= den).to(torch.int32)  # the + D of the numerator: one more when r + D >= 2D


def _digits(coeffs: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in) int32 coefficients -> (3 n_out, n_in) float32: their base-256 digits, most significant
    first (c = d2 65536 + d1 256 + d0), so that a float32 matrix product with uint8 pixels is exact (every
    partial sum below 2^24 while a pixel has at most 258 taps: up to a 128-fold shrink)."""
    hi = _floor_div(coeffs, _DIGIT * _DIGIT)
    rest = coeffs - hi * (_DIGIT * _DIGIT)
    mid = _floor_div(rest, _DIGIT)
    return torch.cat([hi, mid, rest - mid * _DIGIT], dim=0).to(torch.float32)


def _clip8(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """PIL's ``clip8`` of the three digit sums of a pass: acc = d2 65536 + d1 256 + d0 (int32: acc is at most
    255 (2^22 + taps)), (acc + 2^21) >> 22, clipped to [0, 255]; float32."""
    hi, mid, lo = (p.to(torch.int32) for p in parts)
    acc = hi * (_DIGIT * _DIGIT) + mid * _DIGIT + lo + (1 << (_PRECISION_BITS - 1))
    return torch.clamp(_floor_div(acc, 1 << _PRECISION_BITS).to(torch.float32), 0, 255)


def _vertical_first_rule() -> bool:
    """Whether the installed Pillow resizes vertically first when the height shrinks much more than the width
    (Pillow >= 13); earlier releases always resize horizontally first."""
    import PIL

    return int(PIL.__version__.split(".")[0]) >= 13


def _horizontal(x: torch.Tensor, cw: torch.Tensor) -> torch.Tensor:
    return _clip8(torch.matmul(x, cw.transpose(0, 1)).unflatten(-1, (3, -1)).unbind(-2))


def _vertical(x: torch.Tensor, ch: torch.Tensor) -> torch.Tensor:
    return _clip8(torch.matmul(ch, x).unflatten(-2, (3, -1)).unbind(-3))


def _horizontal_first(x: torch.Tensor, cw: torch.Tensor, ch: torch.Tensor) -> torch.Tensor:
    return _vertical(_horizontal(x, cw), ch)


def _vertical_first(x: torch.Tensor, cw: torch.Tensor, ch: torch.Tensor) -> torch.Tensor:
    return _horizontal(_vertical(x, ch), cw)


class PILBilinearResize(nn.Module):
    """``Image.resize((S, S), Image.BILINEAR)`` of 8-bit RGB images, bit-exact: uint8 (B, H, W, 3) -> float32
    (B, 3, S, S) in [0, 1] (``/ 255``).

    PIL resamples 8-bit images in two passes, each with integer coefficients (weights x 2^22) and rounded to
    uint8. Here the coefficients are computed exactly in int32 (:func:`_pil_coefficients`), each pass is a
    float32 matrix product with their base-256 digits (exact: every partial sum is an integer below 2^24,
    :func:`_digits`), and the digit sums are recombined and rounded in int32 as PIL does (:func:`_clip8`):
    no float64 anywhere, so runtimes that run float64 as float32 (OpenVINO's CPU plugin) compute the same
    bits. The order of the passes matters (each rounds): Pillow resizes horizontally first, except (Pillow >=
    13) when the height shrinks more than twice as much as the width, ``H > S and H - S > 2 (W - S)``, then
    vertically first (checked against PIL on random sizes). ``vertical_first_rule``: follow that rule
    (default: whether the installed Pillow has it). Cost: about 9 H W S multiply-adds for the first pass
    (O(H W S) rather than PIL's O(H W): fine for camera images). Bit-exact up to a 128-fold shrink per side.
    """

    def __init__(self, size: int, vertical_first_rule: bool | None = None):
        super().__init__()
        self.size = int(size)
        self.vertical_first_rule = _vertical_first_rule() if vertical_first_rule is None else bool(vertical_first_rule)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        S = self.size
        x = image.permute(0, 3, 1, 2).to(torch.float32)  # (B, 3, H, W)
        rows = torch.arange(x.shape[2], dtype=torch.int32, device=x.device)
        cols = torch.arange(x.shape[3], dtype=torch.int32, device=x.device)
        cw, ch = _digits(_pil_coefficients(cols, S)), _digits(_pil_coefficients(rows, S))  # (3S, W), (3S, H)
        if not self.vertical_first_rule:
            out = _horizontal_first(x, cw, ch)
        else:
            h, w = rows[-1] + 1, cols[-1] + 1
            vertical = (h > S) & (h - S > 2 * (w - S))
            out = torch.cond(vertical, _vertical_first, _horizontal_first, (x, cw, ch))
        return out / 255.0
