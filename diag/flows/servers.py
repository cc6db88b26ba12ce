"""Which end of a flow is the server when the capture missed the handshake: Zeek's ``likely_server_ports``.

Zeek keeps a set of ports that servers are likely to listen on, filled by
its protocol scripts (each adds its well-known ports: DNS 53, DHCP 67, NTP
123, HTTP 80, ...). When a connection's first packet is not a SYN, Zeek uses
the set to decide who is the originator (``WantConnection`` of its TCP and
UDP analyzers):

- UDP: the roles are flipped (the first packet's receiver is the originator)
  when the source port is a likely server port and the destination port is
  not. A DHCP reply 67 -> 68 seen first is still a connection from 68 to 67;
  NTP 123 -> 123 stays as seen.
- TCP, first packet other than a SYN without ACK (a SYN-ACK, or midstream):
  flipped when the source port is a likely server port and the destination
  port is not; when both are, flipped only for a packet without SYN whose
  source port is the lower one.

A flip puts ``^`` in the history. The set below is the value Zeek's
documentation gives for a run of its base scripts (policy scripts such as
MQTT's not loaded), with NTP's and Geneve's ports that later versions add;
analyzers newer still (LDAP, QUIC, PostgreSQL, ...) add ports not listed here.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from diag.capture.proto import TCP, UDP

LIKELY_SERVER_TCP_PORTS: Final = frozenset(
    {
        21, 2811,  # FTP
        22,  # SSH
        25, 587,  # SMTP
        53,  # DNS
        80, 81, 631, 1080, 3128, 8000, 8080, 8888,  # HTTP (1080 also SOCKS)
        88,  # Kerberos
        135,  # DCE-RPC
        139, 445,  # SMB
        143,  # IMAP
        443, 563, 585, 614, 636, 989, 990, 992, 993, 995, 5223,  # SSL/TLS
        502,  # Modbus
        3389,  # RDP
        5222, 5269,  # XMPP
        6666, 6667, 6668, 6669,  # IRC
        20000,  # DNP3
    }
)  # fmt: skip

LIKELY_SERVER_UDP_PORTS: Final = frozenset(
    {
        53, 137, 5353, 5355,  # DNS, NetBIOS name service, mDNS, LLMNR
        67,  # DHCP server (not 68: the client's port)
        88,  # Kerberos
        123,  # NTP
        161, 162,  # SNMP
        443,  # DTLS
        514,  # syslog
        1812,  # RADIUS
        2123, 2152,  # GTPv1
        3544,  # Teredo
        4789,  # VXLAN
        5060,  # SIP
        5072,  # AYIYA
        6081,  # Geneve
        20000,  # DNP3
    }
)  # fmt: skip


def likely_server_table() -> npt.NDArray[np.bool_]:
    """A lookup for compiled code: ``table[TCP or UDP, port]`` is True for a likely server port."""
    table = np.zeros((max(TCP, UDP) + 1, 1 << 16), dtype=np.bool_)
    table[TCP, sorted(LIKELY_SERVER_TCP_PORTS)] = True
    table[UDP, sorted(LIKELY_SERVER_UDP_PORTS)] = True
    table.flags.writeable = False
    return table
