"""Checksums of stored arrays: CRC-32 of each value's C-order little-endian bytes.

CRC-32 (``zlib.crc32``, 8 hex digits) catches every flipped byte and burst up to 32 bits at
several GB/s, which is what an integrity check of our own writes needs; it is not a defence
against tampering. NaNs are stored in canonical form (:func:`canonicalize_nans`) so that a
chunk of fill NaNs hashes the same whether zarr elided it or not. The corpus writer, verify
and publishing hash through these functions, so they agree byte for byte.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence

import numpy as np

CHECKSUM_ALGORITHM = "crc32"


def _le_bytes(x: np.ndarray) -> memoryview | bytes:
    x = np.asarray(x)
    if x.dtype.kind in "OTU":  # strings: each as UTF-8, NUL-terminated, in C order
        return b"".join(str(v).encode("utf-8") + b"\0" for v in x.reshape(-1).tolist())
    x = np.ascontiguousarray(x)
    if x.dtype.byteorder == ">" or (x.dtype.byteorder == "=" and not np.little_endian):
        x = x.astype(x.dtype.newbyteorder("<"))
    return x.reshape(-1).view(np.uint8).data


def checksum(x: np.ndarray) -> str:
    """CRC-32 of an array's little-endian C-order bytes, as 8 hex digits (strings: their
    UTF-8 bytes, each NUL-terminated)."""
    return f"{zlib.crc32(_le_bytes(x)) & 0xFFFFFFFF:08x}"


def row_crcs(x: np.ndarray) -> list[int]:
    """CRC-32 of each row ``x[i]`` (as :func:`checksum` hashes it), as ints."""
    return [zlib.crc32(_le_bytes(row)) & 0xFFFFFFFF for row in x]


def _gf2_times(mat: Sequence[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_compose(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """The operator ``a`` after ``b`` (GF(2) 32 x 32 matrices, one int per column)."""
    return tuple(_gf2_times(a, col) for col in b)


@functools.lru_cache(maxsize=256)
def _zeros_operator(nbytes: int) -> tuple[int, ...]:
    """The linear map that runs a CRC-32 register over ``nbytes`` zero bytes (zlib's
    ``crc32_combine`` operator, composed once per length)."""
    op: tuple[int, ...] = (0xEDB88320, *(1 << n for n in range(31)))  # one zero bit
    for _ in range(3):  # one zero byte
        op = _gf2_compose(op, op)
    out: tuple[int, ...] = tuple(1 << n for n in range(32))  # identity
    while nbytes:
        if nbytes & 1:
            out = _gf2_compose(op, out)
        nbytes >>= 1
        if nbytes:
            op = _gf2_compose(op, op)
    return out


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``a + b`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)`` (zlib's
    ``crc32_combine``, which Python's ``zlib`` does not expose), without reading either."""
    return _gf2_times(_zeros_operator(len2), crc1) ^ crc2 if len2 else crc1


def concat_checksum(crcs: Sequence[int], nbytes: int) -> str:
    """:func:`checksum` of an array from the CRCs of its rows (:func:`row_crcs`), each of
    ``nbytes`` bytes: what hashing the array again would give, in a few microseconds."""
    if not crcs:
        return f"{zlib.crc32(b''):08x}"
    total = crcs[0]
    for c in crcs[1:]:
        total = crc32_combine(total, c, nbytes)
    return f"{total & 0xFFFFFFFF:08x}"


def array_bytes(x: np.ndarray) -> bytes:
    """The bytes :func:`checksum` hashes: a stable serialisation of any stored array (a
    variable-width string array's own buffer holds pointers, not its text)."""
    return bytes(_le_bytes(x))


def canonicalize_nans(x: np.ndarray) -> None:
    """Replace every NaN payload by the canonical quiet NaN, in place."""
    if x.dtype.kind == "f":
        nan = np.isnan(x)
        if nan.any():
            x[nan] = np.nan
