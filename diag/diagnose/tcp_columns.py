"""TCP findings from the signal columns: the registry's rules choose, a finding is rendered per connection.

Each cause module's ``tcp_rule`` claims the connections it explains from
``TcpSignals``; every TCP connection the diagnosis looks at is claimed by
exactly one rule. The same module's ``tcp_finding`` then writes each claimed
connection's finding from the packets it names (the RST, the packet it
answers, the SYNs), made here for all of a rule's connections at once.
"""

from __future__ import annotations

import numpy as np

from diag.capture.proto import SYN
from diag.diagnose.causes import REGISTRY, CauseSpec
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context
from diag.diagnose.tcp_findings import Outcome
from diag.diagnose.tcp_signals import TcpSignals


def _prefetch(s: TcpSignals, chosen: np.ndarray, spec: CauseSpec) -> None:
    """Make the packets the chosen connections' findings name in one go: the RST and its trigger, or the SYNs
    (every packet of a connection whose finding reads them all)."""
    p = s.packets
    wanted = [s.rst[chosen], s.trigger[chosen], s.refused[chosen], s.synack[chosen], s.answer[chosen]]
    unanswered = chosen & (s.rst < 0) & s.syn_verdict
    if unanswered.any():
        mine = unanswered[p.conn] & p.from_orig & p.handshake(SYN)
        wanted.append(np.flatnonzero(mine))
    every = chosen & (s.rst >= 0) & (s.forged | spec.tcp_finding_reads_every_packet)
    if every.any():
        wanted.append(np.flatnonzero(every[p.conn]))
    wanted.append(s.ip_id.last[chosen & s.ip_id.out_of_line & ~s.genuine])  # said only then
    p.prefetch(np.concatenate(wanted))


def judge_by_columns(connections: list[Connection], s: TcpSignals, ctx: Context) -> dict[int, Outcome]:
    """The outcome of every TCP connection, by its position: each is claimed by exactly one cause's rule."""
    claimed = np.zeros(len(connections), dtype=bool)
    outcomes: dict[int, Outcome] = {}
    for cause, spec in REGISTRY.items():
        if spec.tcp_rule is None or spec.tcp_finding is None:
            continue
        mine = spec.tcp_rule(s) & s.tcp
        if (mine & claimed).any():
            raise AssertionError(f"the TCP rule of {cause} claims connections another rule claims")
        claimed |= mine
        _prefetch(s, mine, spec)
        for k in np.flatnonzero(mine).tolist():
            outcomes[k] = spec.tcp_finding(connections[k], s, k, ctx)
    if (s.tcp & ~claimed).any():
        raise AssertionError("a TCP connection no cause's rule claims")
    return outcomes


__all__ = ["Outcome", "judge_by_columns"]
