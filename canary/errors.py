"""canary's own error vocabulary.

Library errors are wrapped here with their cause chained, so the CLI can map each kind to one clear line
and an exit code, and the controller can tell temporary trouble (retry next tick) from permanent.
"""

from __future__ import annotations


class CanaryError(Exception):
    """Base of every error canary raises on purpose; its message is one line meant for a person."""


class PolicyError(CanaryError):
    """A policy file is missing, unreadable or invalid."""

    def __init__(self, path: str, field: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.field = field
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        prefix = f"{where}: " if where else ""
        prefix += f"{field}: " if field else ""
        super().__init__(prefix + message)


class InputError(CanaryError):
    """A file canary was given cannot be read as what it should be (not a regular file, too large, binary)."""


class ScenarioError(CanaryError):
    """A simulated-mesh scenario is missing or invalid."""


class SourceError(CanaryError):
    """The metrics backend could not answer."""

    temporary = False


class SourceUnreachable(SourceError):
    temporary = True


class SourceTimeout(SourceError):
    temporary = True


class BadQuery(SourceError):
    """The backend rejected a query (a typo in a template, an unknown function)."""


class RouterError(CanaryError):
    """The traffic router could not read or change the weights."""

    temporary = False
    unanswered = False  # a write's answer never came (or came as a gateway's timeout): it may be made later


class WeightConflict(RouterError):
    """Someone else changed the route between our read and our write."""

    temporary = True


class AuditError(CanaryError):
    """The audit log could not be written or does not verify."""


class StateError(CanaryError):
    """A rollout state read from a route cannot be decoded; the router adds where it was read from."""


class Cancelled(CanaryError):
    """A signal came before the command had changed anything: nothing was written (exit 4, as a cancel)."""


class ConflictError(CanaryError):
    """Another command holds the audit log's lock, or the route is not in the state a command needs."""
