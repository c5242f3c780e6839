"""netmonctl: the command line client of netmon (docs/DESIGN.md §6).

Talks to netmond over its Unix socket through common.client only; it never
imports netmond.
"""
