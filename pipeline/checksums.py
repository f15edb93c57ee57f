"""Checksums of stored arrays: CRC-32 of each value's C-order little-endian bytes.

CRC-32 (``zlib.crc32``, 8 hex digits) catches every flipped byte and burst up to 32 bits at
several GB/s, which is what an integrity check of our own writes needs; it is not a defence
against tampering. NaNs are stored in canonical form (:func:`canonicalize_nans`) so that a
chunk of fill NaNs hashes the same whether zarr elided it or not. The corpus writer, verify
and publishing hash through these functions, so they agree byte for byte.
"""

from __future__ import annotations

import zlib

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
