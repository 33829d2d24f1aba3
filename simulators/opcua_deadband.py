"""Deadband filters for the OPC UA simulator, as OPC UA Part 4 7.22.2 and Part 8 6.2 define them.

asyncua's server (2.x, `asyncua/server/monitored_item_service.py`) accepts any DataChangeFilter, logs
"DeadbandType Percent is not implemented" and reports every change, and applies an absolute band against the
previous *sample* rather than the last value it reported, so a slow drift in sub-band steps is never reported.
A collector config asking for a percent deadband could therefore not be tested against the simulator.

`DeadbandItems` is asyncua's per-subscription monitored item service with the filter done as a real server
does it; `install(server)` makes every new subscription of a server use it (no library patch):

- CreateMonitoredItems / ModifyMonitoredItems check the filter: a deadband on an attribute other than Value or
  on a variable without a Number data type is Bad_FilterNotAllowed; a percent deadband on a variable without
  an EURange property is Bad_FilterNotAllowed too (what the OPC UA conformance tests expect of a non-analog
  item); a negative band, a percent band over 100 or an unknown deadband type is Bad_DeadbandFilterInvalid.
- A value is reported when its status changes, or when |last reported value − current value| > band, where
  the band is the DeadbandValue (Absolute) or DeadbandValue/100 × (EURange.High − EURange.Low) (Percent, the
  range read when the item is created or modified). Arrays: any element over the band reports the array.
  With a deadband, the StatusValueTimestamp trigger behaves as StatusValue (Part 4 7.10).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, cast

from asyncua import Server, ua
from asyncua.server.address_space import AddressSpace
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.monitored_item_service import MonitoredItemData, MonitoredItemService
from asyncua.ua import uaprotocol_auto

from adapters.opcua.nodeids import make_node_id

log = logging.getLogger(__name__)

EU_RANGE = ua.QualifiedName("EURange", 0)
_NUMBER = make_node_id(ua.ObjectIds.Number, 0)
_HAS_SUBTYPE = make_node_id(ua.ObjectIds.HasSubtype, 0)
_HAS_PROPERTY = make_node_id(ua.ObjectIds.HasProperty, 0)
_BAND_TYPES = (ua.DeadbandType.Absolute, ua.DeadbandType.Percent)
# what the binary decoder makes of a filter (`ua.DataChangeFilter` is a subclass of it with a default trigger)
_DATA_CHANGE_FILTER = uaprotocol_auto.DataChangeFilter


def install(server: Server) -> None:
    """Give every subscription created on `server` from now on a `DeadbandItems` service."""
    service = server.iserver.subscription_service
    create = service.create_subscription

    async def create_subscription(params: ua.CreateSubscriptionParameters, callback: Any, session_id: ua.NodeId,
                                  request_callback: Any = None) -> ua.CreateSubscriptionResult:
        result = await create(params, callback, session_id, request_callback)
        sub = service.subscriptions[result.SubscriptionId]  # no monitored items yet: safe to swap
        sub.monitored_item_srv = DeadbandItems(sub, service.aspace)
        return result

    service.create_subscription = create_subscription  # type: ignore[method-assign]


def eu_range(aspace: AddressSpace, node_id: ua.NodeId) -> ua.Range | None:
    """The variable's EURange property (Part 8 5.3.2), or None when it has none."""
    node = aspace.get(node_id)
    if node is None:
        return None
    for ref in node.references:
        if ref.IsForward and ref.ReferenceTypeId == _HAS_PROPERTY and ref.BrowseName == EU_RANGE:
            if ref.NodeId not in aspace:
                return None
            dv = aspace.read_attribute_value(ref.NodeId, ua.AttributeIds.Value)
            value = dv.Value.Value if dv.Value is not None else None
            return value if isinstance(value, ua.Range) else None
    return None


def is_number_type(aspace: AddressSpace, data_type: ua.NodeId) -> bool:
    """Whether the data type is Number or one of its subtypes (Double, Int32, Duration, ...)."""
    seen: set[ua.NodeId] = set()
    current: ua.NodeId | None = data_type
    while current is not None and current not in seen:
        if current == _NUMBER:
            return True
        seen.add(current)
        node = aspace.get(current)
        if node is None:
            return False
        current = next((r.NodeId for r in node.references
                        if not r.IsForward and r.ReferenceTypeId == _HAS_SUBTYPE), None)
    return False


class DeadbandItems(MonitoredItemService):
    """asyncua's monitored item service with spec deadbands (module doc): filters checked on create and modify,
    values compared with the last one reported."""

    def __init__(self, isub: InternalSubscription, aspace: AddressSpace) -> None:
        super().__init__(isub, aspace)
        self._bands: dict[int, float] = {}  # monitored item id -> absolute band (percent resolved)
        self._reported: dict[int, ua.DataValue] = {}  # monitored item id -> last value reported
        self._pending: float | None = None  # the band of the item being created, until it has an id

    # ------------------------------------------------------------------ filter checks

    def _band(self, node_id: ua.NodeId, attribute: int, flt: Any) -> tuple[ua.StatusCode, float | None]:
        """(Good, absolute band or None without a deadband) or (why the filter is refused, None)."""
        if not isinstance(flt, _DATA_CHANGE_FILTER):
            return ua.StatusCode(), None  # no filter, or one asyncua handles itself
        kind = flt.DeadbandType
        if kind not in (ua.DeadbandType.None_, *_BAND_TYPES):
            return _status(ua.StatusCodes.BadDeadbandFilterInvalid), None
        if attribute != ua.AttributeIds.Value:
            return _status(ua.StatusCodes.BadFilterNotAllowed), None
        if kind == ua.DeadbandType.None_ or node_id not in self.aspace:
            return ua.StatusCode(), None  # an unknown node is refused by asyncua itself (BadNodeIdUnknown)
        value = float(flt.DeadbandValue)
        if not math.isfinite(value) or value < 0 or (kind == ua.DeadbandType.Percent and value > 100):
            return _status(ua.StatusCodes.BadDeadbandFilterInvalid), None
        dtype = self.aspace.read_attribute_value(node_id, ua.AttributeIds.DataType)
        if dtype.Value is None or not is_number_type(self.aspace, dtype.Value.Value):
            return _status(ua.StatusCodes.BadFilterNotAllowed), None
        if kind == ua.DeadbandType.Absolute:
            return ua.StatusCode(), value
        rng = eu_range(self.aspace, node_id)
        if rng is None:
            return _status(ua.StatusCodes.BadFilterNotAllowed), None
        return ua.StatusCode(), value / 100.0 * abs(rng.High - rng.Low)

    async def _create_data_change_monitored_item(
            self, params: ua.MonitoredItemCreateRequest) -> ua.MonitoredItemCreateResult:
        item = params.ItemToMonitor
        status, band = self._band(item.NodeId, item.AttributeId, params.RequestedParameters.Filter)
        if not status.is_good():
            log.info("sim: monitored item on %s refused: %s", item.NodeId.to_string(), status.name)
            return ua.MonitoredItemCreateResult(StatusCode=status)
        self._pending = band  # taken by _make_monitored_item_common: the first value is sent before we return
        try:
            return await super()._create_data_change_monitored_item(params)
        finally:
            self._pending = None

    def _make_monitored_item_common(
            self, params: ua.MonitoredItemCreateRequest) -> tuple[ua.MonitoredItemCreateResult, MonitoredItemData]:
        result, mdata = super()._make_monitored_item_common(params)
        if self._pending is not None:
            self._bands[result.MonitoredItemId] = self._pending
        return result, mdata

    def _modify_monitored_item(self, params: ua.MonitoredItemModifyRequest) -> ua.MonitoredItemModifyResult:
        mdata = self._monitored_items.get(params.MonitoredItemId)
        flt = params.RequestedParameters.Filter
        if mdata is not None and mdata.read_value_id is not None and flt is not None:
            status, band = self._band(mdata.read_value_id.NodeId, mdata.read_value_id.AttributeId, flt)
            if not status.is_good():
                return ua.MonitoredItemModifyResult(StatusCode=status)
            if band is None:
                self._bands.pop(params.MonitoredItemId, None)
            else:
                self._bands[params.MonitoredItemId] = band
        return super()._modify_monitored_item(params)

    def _delete_monitored_items(self, mid: int) -> ua.StatusCode:
        self._bands.pop(mid, None)
        self._reported.pop(mid, None)
        return super()._delete_monitored_items(mid)

    async def _set_monitoring_mode(self, mode: ua.MonitoringMode, mid: int) -> ua.StatusCode:
        if mode == ua.MonitoringMode.Disabled:
            self._reported.pop(mid, None)  # re-enabled, the item reports its current value first
        return await super()._set_monitoring_mode(mode, mid)

    # ------------------------------------------------------------------ reporting

    async def datachange_callback(self, handle: int, value: ua.DataValue, error: ua.StatusCode | None = None) -> None:
        mid = self._monitored_datachange.get(handle)
        band = self._bands.get(mid) if mid is not None else None
        mdata = self._monitored_items.get(mid) if mid is not None else None
        if error or band is None or mdata is None:
            await super().datachange_callback(handle, value, error)
            return
        assert mid is not None
        if mdata.mode == ua.MonitoringMode.Disabled:
            return
        mdata.mvalue.set_current_datavalue(value)
        last = self._reported.get(mid)
        if last is not None and not exceeds(last, value, mdata.filter.Trigger, band):
            return
        self._reported[mid] = copy.deepcopy(value)
        event = ua.MonitoredItemNotification()
        event.ClientHandle = mdata.client_handle
        event.Value = value
        await self.isub.enqueue_datachange_event(mid, event, mdata.queue_size)


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(cast(Any, code))


def exceeds(last: ua.DataValue, current: ua.DataValue, trigger: int, band: float) -> bool:
    """Whether `current` is to be reported after `last` (the last value reported) under a deadband."""
    if last.StatusCode != current.StatusCode:
        return True  # the deadband is ignored when the status changes
    if trigger == ua.DataChangeTrigger.Status:
        return False
    old = last.Value.Value if last.Value is not None else None
    new = current.Value.Value if current.Value is not None else None
    if isinstance(old, list) and isinstance(new, list):
        return len(old) != len(new) or any(_over(a, b, band) for a, b in zip(old, new, strict=True))
    return _over(old, new, band)


def _over(old: Any, new: Any, band: float) -> bool:
    if _number(old) and _number(new):
        if math.isnan(old) or math.isnan(new):
            return not (math.isnan(old) and math.isnan(new))
        return bool(abs(new - old) > band)
    return bool(old != new)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
