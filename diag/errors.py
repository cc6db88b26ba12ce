"""Errors that reach the user as one line on stderr and exit status 2."""


class DiagError(Exception):
    """A problem with what the user gave us (bad usage, unreadable input).

    The command-line entry point prints ``diag: <message>`` and exits with
    status 2; no traceback is shown.
    """


class CaptureError(DiagError):
    """A capture file cannot be read at all (missing, not a capture, empty header)."""


class LabError(DiagError):
    """The lab cannot be built or torn down (not root, missing kernel feature, bad topology)."""
