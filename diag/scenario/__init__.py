"""Scenarios: a lab topology, the traffic to drive through it, where to capture, and what should be seen.

    from diag.scenario import load_scenario, run_scenario

    result = run_scenario(load_scenario("incident"), Path("out"))
    result.capture_paths      # {"client": Path("out/client.pcapng"), ...}
    result.report             # the analysis of those captures (diag.report.Report)
"""

from diag.scenario.runner import RunResult, run_scenario, with_fix
from diag.scenario.spec import Scenario, available_scenarios, load_scenario

__all__ = ["RunResult", "Scenario", "available_scenarios", "load_scenario", "run_scenario", "with_fix"]
