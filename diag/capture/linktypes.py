"""Link-layer header types: their libpcap names and which ones diag decodes."""

from __future__ import annotations

from typing import Final

EN10MB: Final = 1
NULL: Final = 0
RAW: Final = 101
DLT_RAW_LINUX: Final = 12  # DLT_RAW as most systems number it; files from old writers carry it
DLT_RAW_OPENBSD: Final = 14
LOOP: Final = 108
LINUX_SLL: Final = 113
LINUX_SLL2: Final = 276
IPV4: Final = 228
IPV6: Final = 229

# Names as libpcap's pcap_datalink_val_to_name spells them (what tcpdump and
# tshark show), for the link types one meets in the field.
LINKTYPE_NAMES: Final[dict[int, str]] = {
    0: "NULL",
    1: "EN10MB",
    6: "IEEE802",
    8: "SLIP",
    9: "PPP",
    10: "FDDI",
    12: "RAW",
    14: "RAW",
    50: "PPP_SERIAL",
    51: "PPP_ETHER",
    101: "RAW",
    104: "C_HDLC",
    105: "IEEE802_11",
    107: "FRELAY",
    108: "LOOP",
    113: "LINUX_SLL",
    117: "PFLOG",
    119: "PRISM_HEADER",
    127: "IEEE802_11_RADIO",
    129: "ARCNET_LINUX",
    138: "APPLE_IP_OVER_IEEE1394",
    139: "MTP2_WITH_PHDR",
    143: "DOCSIS",
    163: "IEEE802_11_RADIO_AVS",
    165: "BACNET_MS_TP",
    166: "PPP_PPPD",
    187: "BLUETOOTH_HCI_H4",
    189: "USB_LINUX",
    192: "PPI",
    195: "IEEE802_15_4_WITHFCS",
    201: "BLUETOOTH_HCI_H4_WITH_PHDR",
    220: "USB_LINUX_MMAPPED",
    224: "FC_2_WITH_FRAME_DELIMS",
    228: "IPV4",
    229: "IPV6",
    230: "IEEE802_15_4_NOFCS",
    231: "DBUS",
    235: "DVB_CI",
    249: "NETLINK",
    251: "BLUETOOTH_LE_LL",
    253: "NETANALYZER_NG",
    254: "BLUETOOTH_LINUX_MONITOR",
    256: "BLUETOOTH_LE_LL_WITH_PHDR",
    263: "NFLOG",
    264: "NETANALYZER",
    265: "NETANALYZER_TRANSPARENT",
    276: "LINUX_SLL2",
}

SUPPORTED: Final[frozenset[int]] = frozenset(
    {NULL, EN10MB, DLT_RAW_LINUX, DLT_RAW_OPENBSD, RAW, LOOP, LINUX_SLL, LINUX_SLL2, IPV4, IPV6}
)


def linktype_name(link_type: int) -> str:
    """The libpcap name of a link type, or ``LINKTYPE_<n>`` when it has none we know."""
    return LINKTYPE_NAMES.get(link_type, f"LINKTYPE_{link_type}")
