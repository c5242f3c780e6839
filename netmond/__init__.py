"""netmond: the netmon sampling daemon."""

from common import __version__

__all__ = ["__version__"]
