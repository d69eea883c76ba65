"""The bus: subscriptions fed from the log (local relay; EventBridge on AWS).

The AWS adapters (`palette.bus.eventbridge`, `palette.bus.sqs`, `palette.bus.stream`) need
boto3 and are imported from their modules, not from here.
"""

from palette.bus.checkpoints import DeadLetter, SubscriberCheckpoints
from palette.bus.local import LocalBus
from palette.bus.patterns import EventPattern, InvalidPattern, compile_pattern
from palette.bus.port import Bus, BusError, Handler, Subscription, UnknownSubscriber
from palette.bus.retry import Backoff

__all__ = [
    "Backoff",
    "Bus",
    "BusError",
    "DeadLetter",
    "EventPattern",
    "Handler",
    "InvalidPattern",
    "LocalBus",
    "Subscription",
    "SubscriberCheckpoints",
    "UnknownSubscriber",
    "compile_pattern",
]
