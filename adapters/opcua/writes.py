"""OPC UA write-back: the node's DataType is read first and the value must fit it exactly, then one Write.

A value is never coerced into a type that cannot hold it (a 300 into a Byte, 1.5 into an Int32): that is a
`type_mismatch` with the node's type named. The tag's scale and offset are undone before the write, as the
reading side applies them (adapters/opcua/adapter.py `make_converter`).
"""

from __future__ import annotations

import math
from typing import Any

from asyncua import Client, ua

from adapters.base import WriteError

__all__ = ["INT_BOUNDS", "coerce", "variant_type", "write_value"]

VT = ua.VariantType
INT_BOUNDS: dict[ua.VariantType, tuple[int, int]] = {
    VT.SByte: (-(2**7), 2**7 - 1), VT.Byte: (0, 2**8 - 1), VT.Int16: (-(2**15), 2**15 - 1),
    VT.UInt16: (0, 2**16 - 1), VT.Int32: (-(2**31), 2**31 - 1), VT.UInt32: (0, 2**32 - 1),
    VT.Int64: (-(2**63), 2**63 - 1), VT.UInt64: (0, 2**64 - 1),
}
_WRITABLE = frozenset({VT.Boolean, VT.Float, VT.Double, VT.String, *INT_BOUNDS})


def variant_type(data_type: Any) -> ua.VariantType | None:
    """The built-in VariantType of a DataType node id (namespace 0, ids 1..25 equal the VariantType values);
    None for structures, enumerations and vendor types, which this collector does not write."""
    if not isinstance(data_type, ua.NodeId) or data_type.NamespaceIndex != 0:
        return None
    ident = data_type.Identifier
    if not isinstance(ident, int):
        return None
    try:
        vt = VT(ident)
    except ValueError:
        return None
    return vt if vt in _WRITABLE else None


def coerce(value: Any, vt: ua.VariantType, scale: float = 1.0, offset: float = 0.0) -> Any:
    """The engineering `value` as the raw value a `vt` node holds; ValueError says why it does not fit."""
    if vt == VT.Boolean:
        if not isinstance(value, bool):
            raise ValueError(f"the node is Boolean: give true or false, not {value!r}")
        return value
    if vt == VT.String:
        if not isinstance(value, str):
            raise ValueError(f"the node is String: give a string, not {type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"the node is {vt.name}: give a finite number, not {value!r}")
    raw: int | float = value
    if scale != 1.0 or offset != 0.0:
        raw = (value - offset) / scale
    if vt in INT_BOUNDS:
        whole = round(raw)
        if abs(raw - whole) > 1e-9 * max(1.0, abs(raw)):
            raise ValueError(f"the node is {vt.name}: {value!r} is not a whole number")
        lo, hi = INT_BOUNDS[vt]
        if not lo <= whole <= hi:
            raise ValueError(f"the node is {vt.name} ({lo}..{hi}): {whole} does not fit")
        return int(whole)
    if vt == VT.Float and abs(raw) > 3.4028234663852886e38:
        raise ValueError(f"the node is Float: {value!r} does not fit")
    return float(raw)


async def write_value(client: Client, node: ua.NodeId, value: Any, scale: float, offset: float) -> Any:
    """Read the node's DataType and Value, write `value` (coerced), return the old raw value.

    WriteError("type_mismatch") when the type does not fit, WriteError("device_refused") with the server's
    status (BadNotWritable, BadUserAccessDenied, BadTypeMismatch, ...) when the server says no."""
    params = ua.ReadParameters()
    for attr in (ua.AttributeIds.DataType, ua.AttributeIds.Value):
        rv = ua.ReadValueId()
        rv.NodeId = node
        rv.AttributeId = attr
        params.NodesToRead.append(rv)
    type_dv, value_dv = await client.uaclient.read(params)
    if type_dv.StatusCode is not None and not type_dv.StatusCode.is_good():
        raise WriteError("device_refused", f"cannot read the node's DataType: {type_dv.StatusCode.name}")
    vt = variant_type(type_dv.Value.Value if type_dv.Value is not None else None)
    if vt is None:
        raise WriteError("type_mismatch", f"the node's DataType {type_dv.Value.Value if type_dv.Value else None} "
                         "is not a built-in number, Boolean or String: not writable here")
    try:
        raw = coerce(value, vt, scale, offset)
    except ValueError as exc:
        raise WriteError("type_mismatch", str(exc)) from None
    write = ua.WriteParameters()
    wv = ua.WriteValue()
    wv.NodeId = node
    wv.AttributeId = ua.AttributeIds.Value
    wv.Value = ua.DataValue(Value=ua.Variant(raw, vt))  # no timestamps: many servers refuse to be given them
    write.NodesToWrite.append(wv)
    (status,) = await client.uaclient.write(write)
    if not status.is_good():
        raise WriteError("device_refused", f"the server refused the write: {status.name}")
    good = value_dv.StatusCode is None or value_dv.StatusCode.is_good()
    old = value_dv.Value.Value if good and value_dv.Value is not None else None
    return old
