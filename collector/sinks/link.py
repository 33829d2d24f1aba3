"""Connection bookkeeping shared by every outbox transport (the sender in collector/delivery.py reads it)."""

from __future__ import annotations


class LinkState:
    """Up or down, and a generation that rises at every (re)connection or forced resync, so the sender knows
    to recompute its cursors."""

    def __init__(self) -> None:
        self._up = False
        self._generation = 0

    @property
    def connected(self) -> bool:
        return self._up

    @property
    def generation(self) -> int:
        return self._generation

    def link_up(self) -> None:
        self._up = True
        self._generation += 1

    def link_down(self) -> None:
        self._up = False

    def resync(self) -> None:
        """Make the sender start again from the oldest row the transport does not hold."""
        self._generation += 1
