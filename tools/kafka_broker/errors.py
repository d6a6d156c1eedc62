"""The one error of the broker harness: what went wrong, with the broker's log when it helps."""

from __future__ import annotations


class BrokerError(Exception):
    """The test broker could not be started, stopped or reached."""

    def __init__(self, message: str | None = None, log_tail: str = "") -> None:
        super().__init__(message or self.__doc__)
        self.log_tail = log_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.log_tail:
            text += "\n--- broker log (tail) ---\n" + self.log_tail.rstrip() + "\n---"
        return text
