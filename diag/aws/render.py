"""``diag aws check`` as text: the verdict first, then evidence and fixes, then the supporting numbers."""

from __future__ import annotations

from diag.aws.assess import Assessment, metric_lines
from diag.aws.findings import checked_paths


def render_text(assessment: Assessment) -> str:
    report = assessment.report
    inventory = assessment.inventory
    listeners = sum(len(b.listeners) for b in inventory.load_balancers)
    out: list[str] = []
    if not report.findings:
        out.append(
            f"verdict: healthy: {len(inventory.load_balancers)} Network Load Balancer(s), {listeners} listener(s) "
            f"in {inventory.region}; no target's reply can meet a NAT gateway"
        )
    for number, finding in enumerate(report.findings, start=1):
        if number == 1:
            out.append(f"verdict: {finding.cause} (confidence {finding.confidence:.2f})")
        else:
            if number == 2:
                out += ["", f"other findings ({len(report.findings) - 1}):"]
            out += ["", f"finding {number}: {finding.cause} (confidence {finding.confidence:.2f})"]
        out.append(f"  {finding.summary}")
        out.append("  evidence:")
        out += [f"    - {line}" for line in finding.evidence]
        if finding.ruled_out:
            out.append("  ruled out:")
            out += [f"    - {r.cause}: {r.why}" for r in finding.ruled_out]
        if finding.fixes:
            out.append("  fixes:")
            out += [f"    - {fix}" for fix in finding.fixes]
    out.append("")
    out.append("checked:")
    out += [f"  - {line}" for line in checked_paths(inventory)] or ["  - no Network Load Balancers"]
    if assessment.metrics is not None:
        m = assessment.metrics
        out.append("")
        out.append(f"metrics {m.start:%Y-%m-%d %H:%M} to {m.end:%Y-%m-%d %H:%M} UTC:")
        out += [f"  - {line}" for line in metric_lines(m)]
    if assessment.flow_log is not None:
        log = assessment.flow_log
        out.append("")
        out.append(
            f"flow logs: {len(log.records)} record(s), {log.bad_lines} bad line(s), {log.skipped} without data; "
            f"{len(assessment.forged_resets)} flow(s) with a reset the client did not send"
        )
    if report.warnings:
        out.append("")
        out.append("notes:")
        out += [f"  - {w}" for w in report.warnings]
    return "\n".join(out) + "\n"
