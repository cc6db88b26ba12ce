"""Diagnosis: from correlated captures to findings with a cause, evidence and fixes.

``engine`` applies the rules (``tcp``, ``udp``) to the connections
that ``connections`` assembles across capture points; ``signals`` holds the
single facts they stand on, ``context`` what the whole analysis knows (which
points were captured, when, in what order); ``causes`` is the registry, one
module a cause, with its fixes and what rules it out.
"""

from diag.diagnose.engine import diagnose

__all__ = ["diagnose"]
