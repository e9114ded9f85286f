"""kopf handlers; importing this package registers them all."""

from . import modelversion, startup, trainingrun

__all__ = ["modelversion", "startup", "trainingrun"]
