"""Importing this module registers every kind with the engine and every kopf handler."""

from . import routing, startup
from .modelversion import handlers as modelversion
from .trainingrun import handlers as trainingrun
from .trainingschedule import handlers as trainingschedule

__all__ = ["modelversion", "routing", "startup", "trainingrun", "trainingschedule"]
