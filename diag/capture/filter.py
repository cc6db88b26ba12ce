"""Packet filters in the pcap-filter language (what people type after ``tcpdump``), as masks over the packet table.

``parse_filter("tcp and host 10.0.0.5 and not port 22")`` turns the text into
a small tree of frozen values; ``filter_mask(packets, tree)`` evaluates it
column by column and returns one boolean per row, so a million packets cost a
few numpy operations per primitive, never a Python loop over rows. Address
primitives are decided once per distinct address (the ``src``/``dst``
columns are categoricals) and spread to the rows through the category codes.

The grammar follows pcap-filter(7), including its less obvious rules:
- ``and`` and ``or`` have the same precedence and associate left to right
  (``a or b and c`` is ``(a or b) and c``); ``not`` binds tightest;
- a bare identifier reuses the most recent qualifiers (``port 80 or 443``,
  ``not host a and b`` is ``not host a and host b``); at the start it is a host;
- ``net`` takes CIDR, ``net X mask Y`` and the short forms ``10`` and ``172.16``.

It runs on the decoded packet, like Wireshark's display filters, not on raw
bytes like tcpdump's BPF: a VLAN tag or a tunnel does not hide the addresses
(rows hold the innermost headers), and ``tcp[tcpflags]`` works for IPv6 too.
What the packet table does not keep (Ethernet addresses, ARP, arbitrary
payload bytes) is refused with one line naming the word, rather than guessed.
"""

from __future__ import annotations

import ipaddress
import operator
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from diag.capture.proto import ACK, CWR, ECE, FIN, ICMP, ICMPV6, PSH, RST, SYN, TCP, UDP, URG
from diag.errors import DiagError

if TYPE_CHECKING:  # pandas is loaded by the time a table is filtered; parsing an expression needs none of it
    import pandas as pd

SCTP: Final = 132
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
BoolArray = np.ndarray  # one bool per packet row


class FilterError(DiagError):
    """The expression cannot be parsed or asks for something the packet table does not hold."""


# ---------------------------------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class Qual:
    """The qualifiers in front of an identifier: ``tcp dst port`` is Qual('tcp', 'dst', 'port')."""

    proto: str | None = None  # ip, ip6, tcp, udp, sctp
    dir: str | None = None  # src, dst, "src or dst", "src and dst"
    kind: str | None = None  # host, net, port, portrange


@dataclass(frozen=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    child: Node


@dataclass(frozen=True)
class Addr:
    """host / net: the source, destination or either address is in ``network``."""

    network: Network
    dir: str


@dataclass(frozen=True)
class Port:
    """port / portrange: a TCP, UDP or SCTP port in [low, high]."""

    low: int
    high: int
    dir: str
    proto: int | None  # None: any protocol with ports


@dataclass(frozen=True)
class Field:
    """A column compared with ``==``: ``tcp`` is Field('proto', 6), ``ip6`` is Field('ip_version', 6)."""

    column: str
    value: int


@dataclass(frozen=True)
class Tunnel:
    """``geneve [vni]``, ``vxlan [vni]``: the row came out of that tunnel (its other columns are the inner packet)."""

    kind: str
    vni: int | None = None


@dataclass(frozen=True)
class Num:
    value: int


@dataclass(frozen=True)
class Load:
    """``tcp[13]``, ``icmp[icmptype]``, ``len``: a column, valid only on rows of ``proto`` (None: every row)."""

    column: str
    proto: int | tuple[int, ...] | None
    version: int | None = None


@dataclass(frozen=True)
class Arith:
    op: str
    left: Value
    right: Value


@dataclass(frozen=True)
class Relation:
    op: str
    left: Value
    right: Value


Value = Num | Load | Arith
Node = And | Or | Not | Addr | Port | Field | Tunnel | Relation


# ---------------------------------------------------------------------------------------------- words

KEYWORDS: Final = frozenset({
    "host", "net", "port", "portrange", "src", "dst", "and", "or", "not", "proto", "mask",
    "ip", "ip6", "tcp", "udp", "sctp", "icmp", "icmp6", "less", "greater", "len", "vlan", "geneve", "vxlan",
})  # fmt: skip
# Real pcap-filter words whose fields the packet table does not keep.
UNSUPPORTED: Final = frozenset({
    "ether", "fddi", "tr", "wlan", "arp", "rarp", "gateway", "broadcast", "multicast", "protochain",
    "atalk", "aarp", "decnet", "iso", "stp", "ipx", "netbeui", "lat", "moprc", "mopdl", "mpls", "pppoed",
    "pppoes", "igmp", "igrp", "pim", "vrrp", "carp", "ah", "esp", "link", "inbound",
    "outbound", "ifname", "on", "rnr", "rulenum", "reason", "rset", "ruleset", "srnr", "subrulenum", "action",
    "type", "subtype", "dir", "ra", "ta", "addr1", "addr2", "addr3", "addr4", "llc", "clnp", "esis", "isis",
    "vpi", "vci", "lane", "oamf4", "oam", "metac", "bcc", "sc", "ilmic", "connectmsg", "metaconnect",
})  # fmt: skip
PROTO_QUALS: Final = {"ip": None, "ip6": None, "tcp": TCP, "udp": UDP, "sctp": SCTP}
PROTO_NAMES: Final = {"tcp": TCP, "udp": UDP, "icmp": ICMP, "icmp6": ICMPV6, "sctp": SCTP, "igmp": 2, "gre": 47,
                      "esp": 50, "ah": 51, "pim": 103, "vrrp": 112}
NAMED_VALUES: Final = {
    "tcp-fin": FIN, "tcp-syn": SYN, "tcp-rst": RST, "tcp-push": PSH, "tcp-ack": ACK, "tcp-urg": URG,
    "tcp-ece": ECE, "tcp-cwr": CWR,
    "icmp-echoreply": 0, "icmp-unreach": 3, "icmp-sourcequench": 4, "icmp-redirect": 5, "icmp-echo": 8,
    "icmp-routeradvert": 9, "icmp-routersolicit": 10, "icmp-timxceed": 11, "icmp-paramprob": 12,
    "icmp-tstamp": 13, "icmp-tstampreply": 14, "icmp-ireq": 15, "icmp-ireqreply": 16, "icmp-maskreq": 17,
    "icmp-maskreply": 18,
    "icmp6-destinationunreach": 1, "icmp6-packettoobig": 2, "icmp6-timeexceeded": 3,
    "icmp6-parameterproblem": 4, "icmp6-echo": 128, "icmp6-echoreply": 129, "icmp6-routersolicit": 133,
    "icmp6-routeradvert": 134, "icmp6-neighborsolicit": 135, "icmp6-neighboradvert": 136, "icmp6-redirect": 137,
}  # fmt: skip
# Header bytes the packet table keeps: (layer, offset, size) -> column. tcpdump's byte offsets, so that
# ``tcp[13]`` and ``tcp[tcpflags]`` are the same thing; anything else is refused.
LOADS: Final[dict[tuple[str, int, int], str]] = {
    ("ip", 2, 2): "ip_len", ("ip", 4, 2): "ip_id", ("ip", 8, 1): "ttl", ("ip", 9, 1): "proto",
    ("ip6", 7, 1): "ttl",
    ("tcp", 0, 2): "sport", ("tcp", 2, 2): "dport", ("tcp", 4, 4): "seq", ("tcp", 8, 4): "ack",
    ("tcp", 13, 1): "tcp_flags", ("tcp", 14, 2): "win",
    ("udp", 0, 2): "sport", ("udp", 2, 2): "dport", ("sctp", 0, 2): "sport", ("sctp", 2, 2): "dport",
    ("icmp", 0, 1): "icmp_type", ("icmp", 1, 1): "icmp_code",
    ("icmp6", 0, 1): "icmp_type", ("icmp6", 1, 1): "icmp_code",
}  # fmt: skip
OFFSET_NAMES: Final = {"tcpflags": 13, "icmptype": 0, "icmpcode": 1, "icmp6type": 0, "icmp6code": 1}
LAYER_PROTO: Final[dict[str, tuple[int | None, int | None]]] = {
    "ip": (None, 4), "ip6": (None, 6), "tcp": (TCP, None), "udp": (UDP, None), "sctp": (SCTP, None),
    "icmp": (ICMP, 4), "icmp6": (ICMPV6, 6),
}  # fmt: skip
RELOPS: Final[dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = {
    "==": operator.eq, "=": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
    ">=": operator.ge, "<=": operator.le,
}  # fmt: skip
# Arithmetic operators, loosest first; each level is left-associative as in C.
ARITH_LEVELS: Final = (("|",), ("^",), ("&",), ("<<", ">>"), ("+", "-"), ("*", "/", "%"))

_TOKEN = re.compile(r"\s*(&&|\|\||<<|>>|==|!=|>=|<=|[()\[\]!<>=&|^+*/%]|[^\s()\[\]!<>=&|^+*/%]+)")


@dataclass(frozen=True)
class Token:
    text: str
    word: int  # 1-based number of the whitespace-separated word it came from (what the user counts)


def tokenize(text: str) -> list[Token]:
    """Words and operators; ``tcp[13]&4!=0`` and ``(tcp)`` split like tcpdump's lexer splits them."""
    tokens: list[Token] = []
    for word_number, word in enumerate(text.split(), start=1):
        position = 0
        while position < len(word):
            match = _TOKEN.match(word, position)
            if match is None:  # pragma: no cover - the last alternative matches any non-space character
                raise FilterError(f"cannot read {word[position:]!r} at word {word_number}: {text}")
            tokens.append(Token(match.group(1), word_number))
            position = match.end()
    return tokens


# ---------------------------------------------------------------------------------------------- the parser


class _Parser:
    """Recursive descent over the tokens; ``qual`` is the most recent qualifier list (for bare identifiers)."""

    def __init__(self, text: str) -> None:
        self.text = " ".join(text.split())
        self.tokens = tokenize(text)
        self.at = 0
        self.qual: Qual | None = None

    # -- helpers

    def peek(self, ahead: int = 0) -> str | None:
        index = self.at + ahead
        return self.tokens[index].text if index < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise self.error("expected more")
        self.at += 1
        return token

    def error(self, what: str, at: int | None = None, hint: str = "") -> FilterError:
        """``<what> '<word>' at word N (<hint>): <expression>``, one line."""
        index = self.at if at is None else at
        if index >= len(self.tokens):
            last = self.tokens[-1] if self.tokens else None
            where = f"after {last.text!r} (word {last.word})" if last else "in an empty expression"
            return FilterError(f"the expression ends {where}: {hint or what}: {self.text}")
        token = self.tokens[index]
        return FilterError(f"{what} {token.text!r} at word {token.word}{f' ({hint})' if hint else ''}: {self.text}")

    def unexpected(self, hint: str = "") -> FilterError:
        token = self.peek()
        if token is not None and token.lower() in UNSUPPORTED:
            return self.error("the packet table has no field for")
        if token is None:
            return self.error("", hint=hint or "expected a primitive (host, net, port, tcp, ...)")
        return self.error("unexpected", hint=hint)

    # -- boolean structure

    def parse(self) -> Node:
        if not self.tokens:
            raise FilterError("empty expression")
        node = self.expr()
        if self.peek() is not None:
            raise self.unexpected("expected 'and', 'or' or the end")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in ("and", "&&", "or", "||"):
            joiner = self.take()
            right = self.continued()
            node = And(node, right) if joiner in ("and", "&&") else Or(node, right)
        return node

    def continued(self) -> Node:
        """After and/or: a bare identifier (possibly negated) takes the previous qualifiers."""
        negations = 0
        while self.peek(negations) in ("not", "!"):
            negations += 1
        if self.is_bare_id(self.peek(negations)):
            self.at += negations
            node: Node = self.identifier(self.qual or Qual())
            for _ in range(negations):
                node = Not(node)
            return node
        return self.term()

    def term(self) -> Node:
        if self.peek() in ("not", "!"):
            self.take()
            return Not(self.term())
        return self.rterm()

    def rterm(self) -> Node:
        token = self.peek()
        if token is None:
            raise self.unexpected()
        if token == "(":
            relation = self.try_relation()
            if relation is not None:
                return relation
            self.take()
            saved = self.qual
            node = self.expr()
            if self.peek() != ")":
                raise self.unexpected("expected ')'")
            self.take()
            self.qual = saved
            return node
        word = token.lower()
        starts_arith = _is_number(token) and (self.peek(1) in RELOPS or self.is_operator(self.peek(1)))
        if (word in LAYER_PROTO and self.peek(1) == "[") or word == "len" or starts_arith:
            relation = self.try_relation()
            if relation is not None:
                return relation
        if word in ("less", "greater"):
            self.take()
            size = self.number("a length in bytes")
            self.qual = None
            op = "<=" if word == "less" else ">="
            return Relation(op, Load("wire_len", None), Num(size))
        if word == "vlan":
            self.take()
            self.qual = None
            if self.peek() is not None and _is_number(self.peek() or ""):
                return Field("vlan", self.number("a VLAN id"))
            return Not(Field("vlan", -1))
        if word in ("geneve", "vxlan"):
            # As in tcpdump, what follows is about the packet inside; here every row already holds that packet.
            self.take()
            self.qual = None
            if self.peek() is not None and _is_number(self.peek() or ""):
                return Tunnel(word, self.number("a VNI"))
            return Tunnel(word)
        if self.is_bare_id(token):
            # tcpdump reads ``port 80 or (443)`` as two ports: inside parentheses the qualifiers carry on.
            return self.identifier(self.qual or Qual())
        return self.primitive()

    # -- primitives

    def primitive(self) -> Node:
        start = self.at
        proto = dir_ = kind = None
        if (self.peek() or "").lower() in PROTO_QUALS or (self.peek() or "").lower() in ("icmp", "icmp6"):
            proto = self.take().lower()
        if (self.peek() or "").lower() in ("src", "dst"):
            dir_ = self.take().lower()
            if (self.peek() or "").lower() in ("or", "and") and (self.peek(1) or "").lower() in ("src", "dst"):
                other = (self.peek(1) or "").lower()
                if other == dir_:
                    raise self.error("expected the other direction, not", self.at + 1)
                dir_ = "src and dst" if self.take().lower() == "and" else "src or dst"
                self.take()
        following = (self.peek() or "").lower()
        if following in ("host", "net", "port", "portrange"):
            kind = self.take().lower()
        elif following == "proto" and dir_ is None:
            self.take()
            self.qual = None
            return self.protocol(proto)
        if proto is not None and dir_ is None and kind is None:
            self.qual = None  # tcp, udp, ip, ...: a protocol on its own (nothing for a bare identifier to reuse)
            return self.protocol_abbreviation(proto, start)
        if proto in ("icmp", "icmp6"):
            raise self.error("cannot qualify with", start)
        if dir_ is None and kind is None:
            raise self.unexpected()
        if not self.is_bare_id(self.peek()) and self.peek() != "(":
            raise self.unexpected("expected an address or a port")
        return self.identifier(Qual(proto, dir_, kind))

    def protocol_abbreviation(self, proto: str, at: int) -> Node:
        if proto == "ip":
            return Field("ip_version", 4)
        if proto == "ip6":
            return Field("ip_version", 6)
        if proto == "icmp":
            return And(Field("ip_version", 4), Field("proto", ICMP))
        if proto == "icmp6":
            return And(Field("ip_version", 6), Field("proto", ICMPV6))
        number = PROTO_QUALS[proto]
        assert number is not None
        return Field("proto", number)

    def protocol(self, layer: str | None) -> Node:
        """``proto N``, ``ip proto \\tcp``, ``ip6 proto 17``."""
        if layer not in (None, "ip", "ip6"):
            raise self.error("'proto' applies to ip or ip6, not", self.at - 2)
        token = self.peek()
        if token is None:
            raise self.unexpected("expected a protocol number or name")
        name = token.lstrip("\\").lower()
        if _is_number(name):
            number = self.number("a protocol number")
        elif name in PROTO_NAMES:
            self.take()
            number = PROTO_NAMES[name]
        else:
            raise self.unexpected("expected a protocol number or name")
        if not 0 <= number <= 255:
            raise self.error("a protocol number is 0 to 255, not", self.at - 1)
        node: Node = Field("proto", number)
        if layer is not None:
            node = And(Field("ip_version", 4 if layer == "ip" else 6), node)
        return node

    @staticmethod
    def is_operator(token: str | None) -> bool:
        return any(token == op for level in ARITH_LEVELS for op in level)

    def is_bare_id(self, token: str | None) -> bool:
        if token is None or token in ("(", ")", "[", "]", "!", "&&", "||") or token in RELOPS:
            return False
        if self.is_operator(token):
            return False
        return token.lower() not in KEYWORDS and token.lower() not in UNSUPPORTED

    def identifier(self, qual: Qual) -> Node:
        """An address, network, port or port range (or a parenthesised list of them) under ``qual``."""
        self.qual = qual
        if self.peek() == "(":
            # ``host (a or b)``: the identifiers inside share the qualifiers.
            self.take()
            node = self.id_list(qual)
            if self.peek() != ")":
                raise self.unexpected("expected ')'")
            self.take()
            return node
        at = self.at
        token = self.take()
        kind = qual.kind or "host"
        direction = qual.dir or "src or dst"
        if kind in ("port", "portrange"):
            low, high = self.ports(token, kind, at)
            if qual.proto in ("ip", "ip6"):
                version = 4 if qual.proto == "ip" else 6
                return And(Field("ip_version", version), Port(low, high, direction, None))
            return Port(low, high, direction, PROTO_QUALS.get(qual.proto or ""))
        if qual.proto in ("tcp", "udp", "sctp"):
            raise self.error(f"'{qual.proto}' cannot qualify a {kind}:", at)
        network = self.network(token, kind, at)
        if qual.proto is not None and (qual.proto == "ip") != (network.version == 4):
            raise self.error(f"'{qual.proto}' cannot qualify the IPv{network.version} address", at)
        return Addr(network, direction)

    def id_list(self, qual: Qual) -> Node:
        node = self.id_term(qual)
        while self.peek() in ("and", "&&", "or", "||"):
            joiner = self.take()
            right = self.id_term(qual)
            node = And(node, right) if joiner in ("and", "&&") else Or(node, right)
        return node

    def id_term(self, qual: Qual) -> Node:
        if self.peek() in ("not", "!"):
            self.take()
            return Not(self.id_term(qual))
        if not self.is_bare_id(self.peek()) and self.peek() != "(":
            raise self.unexpected("expected an address or a port")
        return self.identifier(qual)

    def ports(self, token: str, kind: str, at: int) -> tuple[int, int]:
        if kind == "portrange":
            low_text, dash, high_text = token.partition("-")
            if not dash:
                raise self.error("a port range is written LOW-HIGH, not", at)
            low, high = _port(low_text), _port(high_text)
            if low is None or high is None:
                raise self.error("not a port range:", at)
            return min(low, high), max(low, high)
        port = _port(token)
        if port is None:
            raise self.error("not a port number or service name:", at)
        return port, port

    def network(self, token: str, kind: str, at: int) -> Network:
        """An address or network; ``net`` also takes ``/len``, ``mask M`` and short IPv4 forms (``10``, ``172.16``)."""
        prefix: int | None = None
        if self.peek() == "/":
            if kind != "net":
                raise self.error("a /length is for 'net', not 'host':", at)
            self.take()
            prefix = self.number("a prefix length")
        elif (self.peek() or "").lower() == "mask":
            if kind != "net":
                raise self.error("a mask is for 'net', not 'host':", at)
            self.take()
            mask_at = self.at
            mask_text = self.take()
            try:
                mask = ipaddress.IPv4Address(mask_text)
            except ValueError:
                raise self.error("not an IPv4 netmask:", mask_at) from None
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen if _contiguous(int(mask)) else None
            if prefix is None:
                raise self.error("a netmask must be contiguous ones, not", mask_at)
        try:
            if prefix is not None:
                return ipaddress.ip_network(f"{_full_ipv4(token)[0] if ':' not in token else token}/{prefix}")
            if ":" in token or kind == "host":
                return ipaddress.ip_network(token)  # a host is a whole address (tcpdump's short forms are nets)
            address, length = _full_ipv4(token)
            return ipaddress.ip_network(f"{address}/{length}")
        except ValueError as error:
            if "host bits set" in str(error):
                raise self.error("has bits set beyond the network's length:", at) from None
            if _is_number(token) and kind == "host":
                raise self.error("a bare number is not an address (did you mean 'port'?):", at) from None
            if re.fullmatch(r"[A-Za-z][\w.-]*", token) and "." not in token:
                raise self.error("unexpected", at) from None
            raise self.error(f"not an IP {'network' if kind == 'net' else 'address'} (names are not resolved):",
                             at) from None

    def number(self, what: str) -> int:
        token = self.peek()
        if token is None or not _is_number(token):
            raise self.unexpected(f"expected {what}")
        self.take()
        return int(token, 0)

    # -- relations: tcp[tcpflags] & tcp-rst != 0

    def try_relation(self) -> Relation | None:
        """A relation if one starts here, else None with the position unchanged (``(`` may open either)."""
        start, saved = self.at, self.qual
        try:
            left = self.arith(0)
            op = self.peek()
            if op not in RELOPS:
                raise self.unexpected("expected a comparison")
            self.take()
            right = self.arith(0)
        except FilterError:
            if self.tokens[start].text == "(":
                self.at, self.qual = start, saved
                return None
            raise
        self.qual = None
        return Relation(op, left, right)

    def arith(self, level: int) -> Value:
        if level == len(ARITH_LEVELS):
            return self.operand()
        node = self.arith(level + 1)
        while self.peek() in ARITH_LEVELS[level]:
            op = self.take()
            right = self.arith(level + 1)
            if op in ("/", "%") and right == Num(0):
                raise self.error("division by zero before", self.at - 1)
            node = Arith(op, node, right)
        return node

    def operand(self) -> Value:
        token = self.peek()
        if token is None:
            raise self.unexpected("expected a number or a header field")
        word = token.lower()
        if token == "(":
            self.take()
            inner = self.arith(0)
            if self.peek() != ")":
                raise self.unexpected("expected ')'")
            self.take()
            return inner
        if _is_number(token):
            self.take()
            return Num(int(token, 0))
        if word in NAMED_VALUES:
            self.take()
            return Num(NAMED_VALUES[word])
        if word == "len":
            self.take()
            return Load("wire_len", None)
        if word in LAYER_PROTO and self.peek(1) == "[":
            return self.load()
        raise self.unexpected("expected a number or a header field")

    def load(self) -> Load:
        at = self.at
        layer = self.take().lower()
        self.take()  # "["
        offset_token = self.take()
        size = 1
        offset_text, colon, size_text = offset_token.partition(":")
        if offset_text.lower() in OFFSET_NAMES:
            offset = OFFSET_NAMES[offset_text.lower()]
        elif _is_number(offset_text):
            offset = int(offset_text, 0)
        else:
            raise self.error("expected a byte offset, not", self.at - 1)
        if not colon and self.peek() == ":":
            self.take()
            colon, size_text = ":", self.take()
        if colon:
            if size_text not in ("1", "2", "4"):
                raise self.error("a field size is 1, 2 or 4, not", self.at - 1)
            size = int(size_text)
        if self.peek() != "]":
            raise self.unexpected("expected ']'")
        self.take()
        column = LOADS.get((layer, offset, size))
        if column is None:
            known = ", ".join(f"{name}[{o}{'' if s == 1 else f':{s}'}]" for name, o, s in LOADS)
            asked = f"{layer}[{offset}{'' if size == 1 else f':{size}'}]"
            word = self.tokens[at].word
            raise FilterError(f"{asked} at word {word} is not in the packet table (it keeps {known}): {self.text}")
        proto, version = LAYER_PROTO[layer]
        return Load(column, proto, version)


def _is_number(token: str) -> bool:
    return re.fullmatch(r"0[xX][0-9a-fA-F]+|[0-9]+", token) is not None


def _port(text: str) -> int | None:
    if _is_number(text):
        value = int(text, 0)
        return value if 0 <= value <= 65535 else None
    for transport in ("tcp", "udp"):
        try:
            return socket.getservbyname(text, transport)
        except OSError:
            continue
    return None


def _contiguous(mask: int) -> bool:
    inverted = ~mask & 0xFFFFFFFF
    return inverted & (inverted + 1) == 0


def _full_ipv4(text: str) -> tuple[str, int]:
    """``10`` -> ('10.0.0.0', 8), ``172.16`` -> ('172.16.0.0', 16): tcpdump's short network numbers."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(part.isdigit() for part in parts):
        raise ValueError(text)
    return ".".join(parts + ["0"] * (4 - len(parts))), 8 * len(parts)


def parse_filter(text: str) -> Node:
    """The expression as a tree; ``FilterError`` (one line, naming the bad word and its position) otherwise."""
    return _Parser(text).parse()


# ---------------------------------------------------------------------------------------------- evaluation


class _Columns:
    """The packet columns an expression reads, as numpy arrays, and the distinct addresses as numbers."""

    def __init__(self, packets: pd.DataFrame) -> None:
        self.packets = packets
        self.arrays: dict[str, np.ndarray] = {}
        self.addresses: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def array(self, column: str) -> np.ndarray:
        if column not in self.arrays:
            self.arrays[column] = self.packets[column].to_numpy()
        return self.arrays[column]

    def in_network(self, column: str, network: Network) -> np.ndarray:
        if column not in self.addresses:
            import pandas as pd

            values = self.packets[column]
            categorical = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
            codes = categorical.cat.codes.to_numpy()
            names = [str(name) for name in categorical.cat.categories.to_numpy(dtype=object)]
            self.addresses[column] = (codes, *_address_numbers(names))
        codes, version, high, low = self.addresses[column]
        # Decided once per distinct address, then spread to the rows; code -1 (missing) is never inside.
        net_high, net_low = _split128(int(network.network_address), network.version)
        mask_high, mask_low = _split128(int(network.netmask), network.version)
        inside = (version == network.version) & ((high & mask_high) == net_high) & ((low & mask_low) == net_low)
        return np.append(inside, False)[codes]


def _split128(value: int, version: int) -> tuple[np.uint64, np.uint64]:
    """An address or mask as two 64-bit halves (IPv4 in the low half), for numpy comparisons."""
    if version == 4:
        return np.uint64(0), np.uint64(value)
    return np.uint64(value >> 64), np.uint64(value & 0xFFFF_FFFF_FFFF_FFFF)


def _address_numbers(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IP version (0: not an address), high and low 64 bits of each address text.

    inet_pton rather than ipaddress: a busy capture has tens of thousands of
    distinct addresses, and ipaddress spends about 40 microseconds on each.
    """
    version, high, low = [], [], []
    for text in texts:
        family, width = (socket.AF_INET6, 6) if ":" in text else (socket.AF_INET, 4)
        try:
            number = int.from_bytes(socket.inet_pton(family, text), "big")
        except OSError:
            number, width = 0, 0
        version.append(width)
        high.append(number >> 64)
        low.append(number & 0xFFFF_FFFF_FFFF_FFFF)
    return np.array(version, dtype=np.int8), np.array(high, dtype=np.uint64), np.array(low, dtype=np.uint64)


def _directed(columns: _Columns, direction: str, test: Callable[[str], np.ndarray]) -> np.ndarray:
    if direction == "src":
        return test("src")
    if direction == "dst":
        return test("dst")
    if direction == "src and dst":
        return np.asarray(np.logical_and(test("src"), test("dst")), dtype=bool)
    return np.asarray(np.logical_or(test("src"), test("dst")), dtype=bool)


def _evaluate(node: Node, columns: _Columns) -> np.ndarray:
    if isinstance(node, And):
        return np.asarray(np.logical_and(_evaluate(node.left, columns), _evaluate(node.right, columns)), dtype=bool)
    if isinstance(node, Or):
        return np.asarray(np.logical_or(_evaluate(node.left, columns), _evaluate(node.right, columns)), dtype=bool)
    if isinstance(node, Not):
        return np.asarray(np.logical_not(_evaluate(node.child, columns)), dtype=bool)
    if isinstance(node, Field):
        return np.asarray(columns.array(node.column) == node.value, dtype=bool)
    if isinstance(node, Tunnel):
        mask = np.asarray((columns.packets["tunnel"] == node.kind).to_numpy(), dtype=bool)
        return mask if node.vni is None else mask & (columns.array("tunnel_id") == node.vni)
    if isinstance(node, Addr):
        return _directed(columns, node.dir, lambda side: columns.in_network(side, node.network))
    if isinstance(node, Port):
        def in_range(side: str) -> np.ndarray:
            ports = columns.array("sport" if side == "src" else "dport")
            return np.asarray((ports >= node.low) & (ports <= node.high), dtype=bool)

        mask = _directed(columns, node.dir, in_range)
        protos = columns.array("proto")
        allowed = (TCP, UDP, SCTP) if node.proto is None else (node.proto,)
        return mask & np.isin(protos, allowed)
    values_left, valid_left = _value(node.left, columns)
    values_right, valid_right = _value(node.right, columns)
    # pcap-filter compares unsigned 32-bit values.
    return np.asarray(RELOPS[node.op](values_left, values_right) & valid_left & valid_right, dtype=bool)


def _value(value: Value, columns: _Columns) -> tuple[np.ndarray, np.ndarray]:
    """Per-row values (as unsigned 32-bit numbers in int64) and where they exist."""
    rows = len(columns.packets)
    if isinstance(value, Num):
        return np.full(rows, value.value & 0xFFFFFFFF, dtype=np.int64), np.ones(rows, dtype=bool)
    if isinstance(value, Load):
        data = columns.array(value.column).astype(np.int64)
        valid = data >= 0
        if value.proto is not None:
            valid &= columns.array("proto") == value.proto
        if value.version is not None:
            valid &= columns.array("ip_version") == value.version
        return data & 0xFFFFFFFF, valid
    left, valid_left = _value(value.left, columns)
    right, valid_right = _value(value.right, columns)
    valid = valid_left & valid_right
    if value.op in ("/", "%"):
        valid &= right != 0
        safe = np.where(right == 0, 1, right)
        result = left // safe if value.op == "/" else left % safe
    else:
        shift = np.minimum(right, 63)
        operations: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
            "|": operator.or_, "^": operator.xor, "&": operator.and_, "+": operator.add, "-": operator.sub,
            "*": operator.mul, "<<": lambda a, b: np.left_shift(a, shift), ">>": lambda a, b: np.right_shift(a, shift),
        }  # fmt: skip
        result = operations[value.op](left, right)
    return np.asarray(result, dtype=np.int64) & 0xFFFFFFFF, valid


def filter_mask(packets: pd.DataFrame, expression: str | Node) -> np.ndarray:
    """One bool per row of ``packets``: does the packet match ``expression`` (text or a parsed tree)."""
    tree = parse_filter(expression) if isinstance(expression, str) else expression
    return np.asarray(_evaluate(tree, _Columns(packets)), dtype=bool)


def filter_packets(packets: pd.DataFrame, expression: str | Node) -> pd.DataFrame:
    """The rows of ``packets`` that match, index and ``attrs`` kept (capture_info travels in attrs)."""
    kept = packets[filter_mask(packets, expression)]
    kept.attrs = dict(packets.attrs)
    return kept
