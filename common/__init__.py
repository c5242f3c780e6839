"""Code shared by netmond and netmonctl; imports nothing of either."""

__version__ = "0.1.0"
