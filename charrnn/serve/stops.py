"""Stop strings in a stream of characters: when a sample ends, and how much of it is safe to send.

A sample ends when its generated text ends with one of its stop strings; the stop string itself is
not part of the answer. While the text ends with the beginning of a stop string, that tail is held
back, since it may yet become the stop string and then must never have been sent.
"""

from __future__ import annotations


class StopScanner:
    """Watches one sample's generated text (the prime is not searched) for ``stops``."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        # Every proper prefix of every stop string: what a tail may be held back for.
        self.prefixes = {s[:i] for s in self.stops for i in range(1, len(s))}

    def stopped(self, text: str) -> int | None:
        """The length of the answer if ``text`` now ends with a stop string (the text before it), else None.

        Called after every character, so only the newest ending needs checking.
        """
        tail = text[-self.longest :] if self.longest else ""
        for stop in self.stops:
            if tail.endswith(stop):
                return len(text) - len(stop)
        return None

    def safe(self, text: str) -> int:
        """How many characters of ``text`` can be sent: all but a tail that begins a stop string."""
        for size in range(min(self.longest - 1, len(text)), 0, -1):
            if text[-size:] in self.prefixes:
                return len(text) - size
        return len(text)
