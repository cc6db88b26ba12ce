"""IP addresses: gathered as raw integers and bytes, formatted once per distinct value.

A capture of a million packets usually holds a few thousand distinct
addresses, so text formatting happens on the distinct values only and each
address column becomes a pandas categorical of integer codes.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from diag.capture.bytesview import IntArray

if TYPE_CHECKING:  # loaded when a column is made, not when the reader is (see diag.capture.reader)
    import pandas as pd


def format_ipv4(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 0xFF}.{(value >> 8) & 0xFF}.{value & 0xFF}"


def format_ipv4_many(values: IntArray) -> list[str]:
    """``format_ipv4`` of each value; the octets are split by numpy, only the joining is per address."""
    octets = [((values >> shift) & 0xFF).tolist() for shift in (24, 16, 8, 0)]
    return [f"{a}.{b}.{c}.{d}" for a, b, c, d in zip(*octets, strict=True)]


def format_ipv6(raw: bytes) -> str:
    """RFC 5952 text, with IPv4-mapped addresses in dotted form as tcpdump and Wireshark print them."""
    address = ipaddress.IPv6Address(raw)
    mapped = address.ipv4_mapped
    if mapped is not None:
        return f"::ffff:{mapped}"
    return str(address)


class AddressColumn:
    """One address column (src, dst, inner_src, inner_dst) built up batch by batch."""

    def __init__(self) -> None:
        self._v4_rows: list[IntArray] = []
        self._v4_values: list[npt.NDArray[np.uint32]] = []
        self._v6_rows: list[IntArray] = []
        self._v6_values: list[npt.NDArray[np.uint8]] = []

    def add_ipv4(self, rows: IntArray, values: npt.NDArray[np.uint32]) -> None:
        if len(rows):
            self._v4_rows.append(rows)
            self._v4_values.append(values)

    def add_ipv6(self, rows: IntArray, values: npt.NDArray[np.uint8]) -> None:
        if len(rows):
            self._v6_rows.append(rows)
            self._v6_values.append(values)

    def to_categorical(self, count: int) -> pd.Categorical[str]:
        """The column for ``count`` rows; rows never given an address hold ''."""
        import pandas as pd

        codes = np.zeros(count, dtype=np.int32)
        categories: list[str] = [""]
        if self._v4_rows:
            values = np.concatenate(self._v4_values)
            # As 32-bit keys: pandas hashes them several times faster than the same values as int64.
            value_codes, distinct = pd.factorize(values.astype(np.uint32, copy=False))
            ipv4_codes = value_codes.astype(np.int32)
            ipv4_codes += len(categories)
            if len(values) == count:
                # Every row has one (rows are listed once each, in order): the codes are the column as they
                # stand, and the zeros above are never touched (nor their pages mapped).
                codes = ipv4_codes
            else:
                codes[np.concatenate(self._v4_rows)] = ipv4_codes
            categories += format_ipv4_many(np.asarray(distinct, dtype=np.int64))
        if self._v6_rows:
            rows = np.concatenate(self._v6_rows)
            values = np.ascontiguousarray(np.concatenate(self._v6_values))
            as_records = values.view(np.dtype((np.void, 16))).ravel()
            distinct6, inverse = np.unique(as_records, return_inverse=True)
            codes[rows] = inverse.astype(np.int32).ravel() + len(categories)
            categories += [format_ipv6(bytes(value)) for value in distinct6]
        return categorical(codes, categories)


def categorical(codes: np.ndarray, categories: list[str]) -> pd.Categorical[str]:
    """A categorical column from integer codes and distinct labels."""
    import pandas as pd

    return pd.Categorical.from_codes(codes, categories=pd.Index(categories, dtype=str))


def endpoint_text(addr: str, port: int) -> str:
    """'addr:port' as reports write endpoints, IPv6 in brackets; just 'addr' when there is no port (-1)."""
    if port < 0:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
