"""zloth's exception tree; library errors are mapped into it at the boundary.

    ZlothError
    ├── ConfigError          bad ZLOTH_* setting (names the variable)
    ├── BusError             NATS / JetStream failures the caller cannot fix
    │   └── BackpressureError   a work queue is full (discard: new)
    ├── StoreError           database failures
    └── HandlerControl       raised by handlers to steer the job protocol
        ├── Retry(delay)     nak with delay; counts as a failed delivery
        └── Reject(reason)   permanent: dead-letter and term
"""

from __future__ import annotations


class ZlothError(Exception):
    pass


class ConfigError(ZlothError):
    pass


class BusError(ZlothError):
    pass


class BackpressureError(BusError):
    """The stream refused the message because it is full (`discard: new`)."""


class StoreError(ZlothError):
    pass


class HandlerControl(ZlothError):
    pass


class Retry(HandlerControl):
    def __init__(self, delay: float, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Reject(HandlerControl):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
