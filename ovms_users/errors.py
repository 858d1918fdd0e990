"""The load side's small exception family: each error names what the user should change."""

from __future__ import annotations

__all__ = ["OvmsUserError", "OptionError", "ServerError"]


class OvmsUserError(Exception):
    """Something that stops a benchmark before it starts; ``str()`` is the one-line message."""


class OptionError(OvmsUserError, ValueError):
    """A bad option value: the message starts with the option's name."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option


class ServerError(OvmsUserError):
    """The server is down, does not serve the model, or answers something that is not a model server's reply."""
