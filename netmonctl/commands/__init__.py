"""One module per netmonctl command; netmonctl.cli.COMMANDS lists them.

Modules import only click and netmonctl's light modules at import time, so
that `netmonctl --help` stays fast; the daemon client is imported by
netmonctl.session when a command runs.
"""
