"""The errors of a Modbus request, whichever client sent it.

Our own classes, not pymodbus's: the lean Modbus TCP client (tcp.py) raises them, and the RTU transport
(rtu.py) turns pymodbus's into them, so a collector that polls only `tcp://` never imports pymodbus.
"""

from __future__ import annotations

__all__ = ["ConnectionLost", "ModbusError", "NoAnswer"]


class ModbusError(Exception):
    """A request got no usable answer: a garbled or truncated answer, or one of the two below."""


class ConnectionLost(ModbusError):
    """The connection is closed (by the peer or by us) or was never open (pymodbus: `ConnectionException`)."""


class NoAnswer(ModbusError):
    """No answer within the timeout and its retries (pymodbus: `ModbusIOException`)."""
