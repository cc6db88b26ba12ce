"""Scenarios: a lab topology, the traffic to drive through it, where to capture, and what should be seen."""
