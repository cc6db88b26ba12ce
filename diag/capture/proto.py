"""Protocol numbers and flag bits, defined once for the whole package.

IP protocol numbers (IANA), TCP flag bits (RFC 9293, RFC 3168 for ECE/CWR)
and the ICMP types that quote the datagram they answer (RFC 792, RFC 4443).
Plain ints so numba's compiled loops take them as constants.
"""

from __future__ import annotations

from typing import Final

# IP protocol numbers
ICMP: Final = 1
TCP: Final = 6
UDP: Final = 17
ICMPV6: Final = 58

# TCP flag bits, for readable filters: ``df.tcp_flags & RST``.
FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80

TCP_FLAG_NAMES: Final[tuple[tuple[int, str], ...]] = (
    (SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"), (URG, "URG"), (ECE, "ECE"), (CWR, "CWR"),
)  # fmt: skip

# ICMP error types: destination unreachable, source quench, redirect, time exceeded, parameter problem.
ICMP_ERROR_TYPES: Final[tuple[int, ...]] = (3, 4, 5, 11, 12)
ICMP_DEST_UNREACHABLE: Final = 3
# ICMPv6 error types: destination unreachable, packet too big, time exceeded, parameter problem.
ICMPV6_ERROR_TYPES: Final[tuple[int, ...]] = (1, 2, 3, 4)

# IP protocol numbers that carry another packet (tunnels the reader looks inside).
IPIP: Final = 4  # IPv4 in IP
IPV6_IN_IP: Final = 41  # IPv6 in IP (6in4, 6in6)
GRE: Final = 47
