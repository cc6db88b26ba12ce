"""Write the walkthrough notebooks from the cells below, without outputs.

The notebooks are generated so that their text and code stay reviewable as
plain Python; run this after editing a cell, and commit the .ipynb files it
writes (outputs stay out of git: the test suite executes them)::

    .venv/bin/python notebooks/build_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

KERNEL = {"name": "python3", "display_name": "Python 3 (diag)", "language": "python"}


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(text.strip())


def code(text: str) -> nbformat.NotebookNode:
    return new_code_cell(text.strip())


NEEDS_ROOT = code(
    """
import os

if os.geteuid() != 0:
    raise PermissionError("this notebook builds network namespaces: start Jupyter as root (sudo)")
"""
)

TCP_VIEW = code(
    '''
from diag.capture.proto import TCP
from diag.plot.flowview import flag_name

pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 20)


def tcp_view(table: pd.DataFrame) -> pd.DataFrame:
    """The TCP packets of one capture with the columns that tell this story, flags spelled out."""
    tcp = table[table["proto"] == TCP]
    view = tcp[["index", "ts_ns", "iface", "src", "sport", "dst", "dport", "ttl", "seq", "ack"]].copy()
    view.insert(1, "t_s", (tcp["ts_ns"] - table["ts_ns"].min()) / 1e9)
    view.insert(2, "flags", tcp["tcp_flags"].map(flag_name))
    return view.drop(columns="ts_ns")
'''
)


def the_incident() -> nbformat.NotebookNode:
    cells = [
        md(
            """
# 01 · The incident, reproduced

A Kubernetes Service sits behind an AWS Network Load Balancer (TCP_UDP listener, instance targets, client IP
preservation on). node-a receives the connection and DNATs it to a pod on node-b without SNAT. The pod answers the
client's real address, so its SYN-ACK leaves node-b by the subnet's default route — to the NAT gateway, which has
never seen this connection and answers with a RST that carries the client's address. The pod sees a RST "from the
client"; the client sees nothing but its own SYNs, retransmitted until it gives up.

This notebook builds that network out of Linux network namespaces (no AWS account needed), captures at every hop
while a client connects, and shows what `diag` makes of the captures. It needs root.
"""
        ),
        NEEDS_ROOT,
        code(
            """
%matplotlib inline
import tempfile
from pathlib import Path

import pandas as pd

import diag
import diag.plot
from diag.scenario import load_scenario, run_scenario
from diag.report.text import render_text
"""
        ),
        md(
            """
## Run the lab

`run_scenario` builds the namespaces, starts a capture on every interface of every box, lets the client connect
through the NLB, stops the captures, tears the lab down and analyzes what was captured. The output directory is a
fresh temporary one.
"""
        ),
        code(
            """
scenario = load_scenario("incident")
print(scenario.description)
out_dir = Path(tempfile.mkdtemp(prefix="diag-incident-")) / "run"
result = run_scenario(scenario, out_dir, progress=print)
"""
        ),
        md("## One capture per point"),
        code(
            """
pd.DataFrame(
    [{"point": c.point, "file": c.path.name, "packets": c.packets, "dropped": c.dropped_by_kernel}
     for c in result.captures]
)
"""
        ),
        md(
            """
Each capture reads into the same packet table (`diag.read_capture`), one row per packet. `tcp_view` keeps the
TCP packets and the columns that matter here.
"""
        ),
        TCP_VIEW,
        code(
            """
tables = {name: diag.read_capture(path, name) for name, path in result.capture_paths.items()}
POD = next(name for name in tables if name.startswith("pod") and (tables[name]["proto"] == TCP).any())
"""
        ),
        md("**The client** only ever sees its own SYN, sent again and again: no SYN-ACK, no RST."),
        code('tcp_view(tables["client"])'),
        md(
            """
**The pod** sees each SYN, answers with a SYN-ACK, and gets a RST whose source is the client's address and port.
To the pod's owner the client reset the connection.
"""
        ),
        code("tcp_view(tables[POD])"),
        md(
            """
**node-a**, which forwarded the SYN to the pod, never sees a SYN-ACK: the reply does not come back the way the
request went.
"""
        ),
        code('tcp_view(tables["node-a"])'),
        md(
            """
**The NAT gateway** receives the pod's SYN-ACK (it has no state for it) and emits the RST itself, on one
interface only, with the client's address as source.
"""
        ),
        code('tcp_view(tables["natgw"])'),
        md("## The verdict"),
        code(
            """
report = result.report
print(render_text(report))
"""
        ),
        md(
            """
## The ladder

One lane per capture point, time flowing down. Each arrow is one packet going from a point that saw it to the
next point that saw it. The SYN crosses the NLB and node-a to the pod; the SYN-ACK turns back towards the client
but stops at the NAT gateway; the RST starts there (★) and claims to come from the client (crossed out).
"""
        ),
        code("diag.plot.ladder(report)"),
        md(
            """
## Why: the evidence, what was ruled out, and the fixes

Every finding says what it saw, which other causes it excluded and why, and what would fix it.
"""
        ),
        code(
            """
verdict = report.verdict
if verdict is None:
    print("no finding: every flow looked healthy")
else:
    print(f"{verdict.cause} ({verdict.confidence:.0%}): {verdict.summary}")
    print(f"the RST claims to come from {verdict.claimed_src}; it was made by {verdict.origin}\\n")
    print("evidence:")
    for line in verdict.evidence:
        print("  -", line)
    print("ruled out:")
    for ruled_out in verdict.ruled_out:
        print(f"  - {ruled_out.cause}: {ruled_out.why}")
    print("fixes:")
    for fix in verdict.fixes:
        print("  -", fix)
"""
        ),
        md(
            """
## The same connection in real time

The ladder spaces packets evenly; the timeline keeps real time: the client's SYN about once a second, and at every
attempt the same SYN-ACK / RST exchange between the pod's side and the NAT gateway.
"""
        ),
        code("diag.plot.timeline(report)"),
        md(
            """
The lab is gone already (it is torn down as soon as the captures stop); the captures, `report.json`,
`report.txt` and `ladder.png` are in `out_dir`. Next: `02-analyze-your-captures.ipynb` does the same analysis on
capture files, yours or the reference ones.
"""
        ),
        code("sorted(path.name for path in out_dir.iterdir())"),
    ]
    return _notebook(cells)


def analyze_your_captures() -> nbformat.NotebookNode:
    cells = [
        md(
            """
# 02 · Analyze your own captures

Give `diag` captures of the same traffic taken at several points — client, nodes, pod, a middlebox — and it
follows each packet from point to point (through NAT), puts the captures on one clock, and says who really sent
each RST and why. By default this notebook uses the reference captures of the incident committed in `captures/`;
change the marked cell to use yours. No root needed.
"""
        ),
        code(
            """
%matplotlib inline
import asyncio
import concurrent.futures
from pathlib import Path

import pandas as pd
import pyshark

import diag
import diag.plot
from diag.capture.proto import ACK, RST, SYN
from diag.correlate import correlate
from diag.report.text import render_text
"""
        ),
        md(
            """
## ▶ Your captures

**Edit this cell** to analyze your own files: one entry per capture point, `name: path`. The names become the
ladder's lanes; pcap, pcapng and gzip-compressed files all work. Leave it as `None` for the reference captures.
"""
        ),
        code(
            """
# ▶ EDIT ME, e.g. {"client": "/data/client.pcap", "node-b": "/data/node-b.pcapng", "pod": "/data/pod.pcap.gz"}
CAPTURES = None
"""
        ),
        code(
            """
REFERENCE = Path(diag.__file__).resolve().parent.parent / "captures"
if CAPTURES is None:
    CAPTURES = {path.name.split(".")[0]: path for path in sorted(REFERENCE.glob("*.pcap*"))}
CAPTURES
"""
        ),
        md("## The verdict"),
        code(
            """
report = diag.analyze(CAPTURES)
print(render_text(report))
"""
        ),
        md(
            """
## Correlate: the same packet at every point

`correlate` gives each physical packet a `match_id` and lists where it was seen in order (`hop`), with the NAT
rewrite seen against the previous point. `paths` summarises each packet's path; `offsets` is what was added to
each capture's clock to put it on the reference capture's.
"""
        ),
        code(
            """
corr = correlate(report.packets)
corr.paths.head(10)
"""
        ),
        code("corr.nat_map"),
        code(
            """
pd.DataFrame(
    [{"capture": name, "offset_s": o.offset_s, "uncertainty_s": o.uncertainty_s} for name, o in corr.offsets.items()]
).set_index("capture")
"""
        ),
        md("## The ladder of the verdict's connection"),
        code("diag.plot.ladder(report)"),
        md(
            """
## Drill down with pandas

`report.packets` holds every packet of every capture (the columns are documented in
`diag.capture.columns`), `report.flows` one row per connection per capture point, Zeek-style.
"""
        ),
        code("report.flows"),
        md(
            """
Which points saw a RST, and from which source address? A RST that the client's own capture never shows was not
sent by the client.
"""
        ),
        code(
            """
packets = report.packets
is_tcp = packets["tcp_flags"] >= 0
resets = packets[is_tcp & ((packets["tcp_flags"] & RST) != 0)]
resets.groupby(["capture", "src"], observed=True).size().rename("resets").reset_index()
"""
        ),
        md(
            """
(A forwarding box captured on both interfaces sees each packet twice, once in and once out.)

TTL tells how many routers a packet crossed. At each point that saw both, compare the TTL of the client's
genuine SYNs with the TTL of the RSTs that carry the client's address: a different hop distance means a
different sender, and an initial TTL (64, 128, 255) means the sender is right there.
"""
        ),
        code(
            """
bare_syn = is_tcp & ((packets["tcp_flags"] & (SYN | ACK)) == SYN)


def ttls(rows: pd.DataFrame) -> pd.Series:
    return rows.groupby("capture", observed=True)["ttl"].agg(lambda ttl: sorted(set(ttl)))


pd.DataFrame({"TTL of the client's SYNs": ttls(packets[bare_syn]), "TTL of the RSTs": ttls(resets)}).dropna()
"""
        ),
        md(
            """
## Dissect one packet fully with pyshark

pyshark runs tshark and gives every field Wireshark knows. Jupyter already runs an asyncio event loop and pyshark
needs one of its own, so it runs in a worker thread here. The packet is the verdict's RST (frame numbers count
from 1, `index` from 0).
"""
        ),
        code(
            '''
def dissect(path: Path, display_filter: str) -> pyshark.packet.packet.Packet:
    """The first packet of ``path`` that matches ``display_filter``, fully dissected by tshark."""
    loop = asyncio.new_event_loop()
    capture = pyshark.FileCapture(str(path), display_filter=display_filter, eventloop=loop)
    try:
        return capture.next()
    finally:
        capture.close()
        loop.close()


first_rst = report.verdict.packet if report.verdict and report.verdict.packet else None
if first_rst is not None:
    path, frame = CAPTURES[first_rst.capture], first_rst.index + 1
else:
    path, frame = CAPTURES[resets["capture"].iloc[0]], int(resets["index"].iloc[0]) + 1
with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
    packet = worker.submit(dissect, path, f"frame.number == {frame}").result()
print(packet)
'''
        ),
        code(
            """
print(f"frame {frame} of {Path(path).name}: {packet.ip.src} -> {packet.ip.dst}, TTL {packet.ip.ttl}, "
      f"IP ID {packet.ip.id}, TCP flags {packet.tcp.flags} ({packet.tcp.flags_str.strip()}), "
      f"seq {packet.tcp.seq_raw}, window {packet.tcp.window_size_value}")
"""
        ),
    ]
    return _notebook(cells)


def the_fixes() -> nbformat.NotebookNode:
    cells = [
        md(
            """
# 03 · The fixes, side by side

Each fix of the incident is a lab topology (`lab/topologies/fix-*.toml`) with the incident's client. This notebook
runs the incident and every fix, and shows for each the verdict, whether the client got its connection, the
address the pod saw the client as, and the ladder. Needs root; about two seconds per fix, ten for the incident
(its client waits for its SYN retries).

| fix | what changes |
|---|---|
| `snat` | kube-proxy with externalTrafficPolicy Cluster: the node masquerades what it forwards, so the reply comes back through it |
| `local` | externalTrafficPolicy Local: a node only hands NodePort traffic to its own pod, and the reply passes back through it |
| `connmark` | the node marks connections that came from the NLB and routes their replies back out of the interface they came in on (VPC CNI style) |
| `ip-targets` | the NLB's target group registers the pods themselves: no NodePort hop, no node DNAT |
| `no-preservation` | a TCP-only listener with client IP preservation off: the NLB's own address becomes the source |
"""
        ),
        NEEDS_ROOT,
        code(
            """
%matplotlib inline
import tempfile
from pathlib import Path

import pandas as pd
from IPython.display import display

import diag.plot
from diag.capture.proto import ACK, RST, SYN
from diag.scenario import available_scenarios, load_scenario, run_scenario
"""
        ),
        code(
            """
pd.set_option("display.max_colwidth", None)
pd.set_option("display.width", 200)
fix_scenarios = [name for name in available_scenarios() if name.startswith("fix-")]
runs_dir = Path(tempfile.mkdtemp(prefix="diag-fixes-"))
results = {}
for name in ["incident", *fix_scenarios]:
    results[name] = run_scenario(load_scenario(name), runs_dir / name)
    print(f"{name:22} {results[name].report.verdict_json()['cause']}")
"""
        ),
        md(
            """
## Side by side

`client connected` is read from the client's own capture (did a SYN-ACK reach it?); `pod saw the client as` is the
source address of the SYNs in the captures of the pods.
"""
        ),
        code(
            '''
COSTS = {
    "incident": "the connection fails: the NAT gateway resets it",
    "snat": "the pod sees the node's address, not the client's",
    "local": "a node without a ready local pod fails the NLB health check; load follows the pods, not the nodes",
    "connmark": "only for a pod on the receiving node; shares the packet-mark space with kube-proxy and the CNI",
    "ip-targets": "pods must be addressable in the VPC (VPC CNI); no NodePort",
    "no-preservation": "impossible on a TCP_UDP or UDP target group; the client address is lost; "
                       "on its own the reply still bypasses node-a",
}


def summary(name: str) -> dict[str, object]:
    result = results[name]
    packets = result.report.packets
    flags = packets["tcp_flags"]
    tcp = flags >= 0
    at = packets["capture"].astype(str)
    syn_ack = tcp & ((flags & (SYN | ACK)) == (SYN | ACK))
    bare_syn = tcp & ((flags & (SYN | ACK)) == SYN)
    pod_sources = sorted(set(packets[bare_syn & at.str.startswith("pod")]["src"].astype(str)))
    return {
        "run": name,
        "verdict": result.report.verdict_json()["cause"],
        "client connected": bool((syn_ack & (at == "client")).any()),
        "RSTs anywhere": int((tcp & ((flags & RST) != 0)).sum()),
        "pod saw the client as": ", ".join(pod_sources) or "-",
        "what it costs": COSTS.get(name.removeprefix("fix-"), ""),
    }


pd.DataFrame([summary(name) for name in results]).set_index("run")
'''
        ),
        md(
            """
## The ladders

Condensed: repeated retransmission cycles are shown once with "×N". In the incident the SYN-ACK turns back at the
NAT gateway; with each fix it retraces the request's path and the client completes its handshake.
"""
        ),
        code(
            """
for name, result in results.items():
    print(name)
    display(diag.plot.ladder(result.report, condensed=True))
"""
        ),
    ]
    return _notebook(cells)


def _notebook(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = KERNEL
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


NOTEBOOKS = {
    "01-the-incident.ipynb": the_incident,
    "02-analyze-your-captures.ipynb": analyze_your_captures,
    "03-the-fixes.ipynb": the_fixes,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook called ``name``, validated, with stable cell ids (regenerating changes no line)."""
    notebook = NOTEBOOKS[name]()
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"{name[:2]}-{index:02d}"
    nbformat.validate(notebook)
    return notebook


def main() -> None:
    for name in NOTEBOOKS:
        nbformat.write(build(name), HERE / name)
        print(f"wrote {name}")


if __name__ == "__main__":
    main()
