"""Which connections may hold a finding: the one predicate the diagnosis and the live watch choose them by.

The diagnosis looks only at connections that show a sign of trouble, which
keeps a busy capture's thousands of clean connections out of it; the watch
re-diagnoses a group of flows only once it shows one. Both compute the signs
from what they hold (the diagnosis per connection from its rows, the watch
per flow as packets arrive) and ask this predicate, so the two cannot drift
apart: a connection the diagnosis would judge is one the watch hands it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Flags = npt.NDArray[np.bool_]


def suspect(
    rst: Flags,
    syn_retried: Flags,
    udp_split: Flags,
    syn_unanswered: Flags,
    udp_one_way: Flags,
    answer_due: bool | Flags = True,
) -> Flags:
    """Per unit (a connection, or a flow of the watch), whether it may hold a finding.

    A RST, a SYN sent again (a retry, the same sequence number) and UDP seen
    as two flows at one point (a NAT on the way rewrote one direction) may be
    a symptom as soon as they are seen. A SYN no SYN-ACK answered and UDP seen
    one way only say that an answer has not come yet: they count once it is
    due (``answer_due``), which a finished capture always is and a live
    window is once its wait for the answer has run out.
    """
    result: Flags = rst | syn_retried | udp_split | (answer_due & (syn_unanswered | udp_one_way))
    return result
