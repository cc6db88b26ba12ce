"""Watching live: a sliding window of packets from several capture points, findings decided as they happen.

``window`` holds the pure parts (the window, when a finding counts as decided,
which findings are new); ``kernel`` the kernel's own account of resets from
tracefs. The command that reads the streams is ``diag.commands.watch``.
"""
