"""An inline box that wins the race: a forged RST+ACK answers the client's SYN, the genuine SYN-ACK passes after.

Run inside the router's namespace (scapy learns the interfaces of the
namespace it starts in): ``field_injector.py CLIENT_IF SERVER_IF SERVER PORT
SECONDS``. The router's forwarding path drops the server's SYN-ACKs (the test
installs that rule); this program sends the RST first, then hands the
genuine SYN-ACK on with one hop's TTL taken, as forwarding does. It prints
``ready`` once sniffing, then one JSON line with what it did.
"""

from __future__ import annotations

import json
import sys

from scapy.config import conf
from scapy.layers.inet import IP, TCP
from scapy.packet import Packet
from scapy.sendrecv import sniff


def main(client_if: str, server_if: str, server: str, port: int, seconds: float) -> None:
    raw = conf.L3socket()
    done = {"rst": 0, "synack": 0, "rst_ttl": 64}

    def handle(packet: Packet) -> None:
        if IP not in packet or TCP not in packet:
            return
        ip, tcp = packet[IP], packet[TCP]
        flags = int(tcp.flags)
        if packet.sniffed_on == client_if and tcp.dport == port and flags & 0x12 == 0x02 and not done["rst"]:
            # In the server's name, acknowledging the SYN exactly: the client's kernel takes it as a refusal.
            raw.send(IP(src=ip.dst, dst=ip.src, ttl=done["rst_ttl"]) / TCP(
                sport=port, dport=tcp.sport, flags="RA", seq=0, ack=(tcp.seq + 1) % 2**32))
            done["rst"] += 1
        elif packet.sniffed_on == server_if and ip.src == server and flags & 0x12 == 0x12 and done["rst"]:
            genuine = ip.copy()
            genuine.ttl -= 1
            del genuine.chksum
            raw.send(genuine)
            done["synack"] += 1

    sniff(iface=[client_if, server_if], prn=handle, store=False, timeout=seconds,
          started_callback=lambda: print("ready", flush=True), stop_filter=lambda _: done["synack"] >= 1)
    raw.close()
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
