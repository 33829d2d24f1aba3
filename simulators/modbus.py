"""Simulated Modbus machines: one pymodbus server per endpoint, one unit id per configured device.

Endpoints: `tcp://host:port` (Modbus TCP), `rtu+tcp://host:port` (RTU frames over TCP, like a serial device
server) and `serial:///path?baudrate=...` (RTU on a serial port). For `serial://` the simulator creates a
pseudo-terminal pair with `socat` (Debian package `socat`): the collector opens the endpoint's path, the
simulator serves the other end (`<path>.sim`); pass `serve_port=` to serve an existing port instead.

The server answers from our own flat arrays (one per table and unit, from address 0 to the end of the last
tag) through a small datastore that pymodbus's server calls directly: no SimDevice rebuilds, no per-address
objects, so 100 devices x 200 tags cost a few MB and one slice per request. A background task per unit ticks
its `MachineModel` and writes the encoded tag values in place.

Behaviour a collector sees:
- addresses between tags read as 0 (coalesced reads work); a request past the last tag of a table, or a
  table the unit has no tag in, answers exception 02;
- fault injection, from the device's `simulate:` block or at run time through the control methods
  (`set_exceptions`, `set_delay`, `set_silent`, `truncate_answers`, `drop_connections`, `refuse_writes`):
  exception 02/04 on chosen addresses (any request touching one) or on every write, answering late, not
  answering at all, answers cut short (the first bytes of a frame, the rest never sent, the connection kept),
  connections dropped;
- an unknown unit id answers exception 0B (gateway target failed to respond) over TCP, nothing over RTU;
- FC 43/14 Read Device Identification answers, per unit, that it is a simulator (`SIM_IDENTIFICATION`:
  VendorName "shopfloor-collector", ProductCode "SIMULATOR"); `set_identification(device, None)` makes a
  unit answer exception 01 instead, like the many real devices without identification;
- the device's `identity:` tags (a serial-number register) are served like its tags;
- every request is logged per unit (`UnitStore.requests`, `.writes`); a written address keeps the written
  value (the machine model stops overwriting it), as a setpoint register does;
- `stop()` closes the listener and every client connection;
- several outstanding requests (a client's `max_outstanding` > 1) are answered only by a `tcp://` simulator
  with `pipelining` on, which is the default when a device behind the endpoint sets `max_outstanding` > 1.
  Otherwise it behaves like pymodbus's server, i.e. like a device that takes one request at a time: of
  several requests in one TCP segment it answers the first and keeps the rest until more bytes arrive.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import shutil
from array import array
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import ModbusIOException, NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.mei_message import ReadDeviceInformationRequest, ReadDeviceInformationResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.transaction import TransactionManager

from adapters.modbus.codec import TagCodec, compile_tag
from adapters.modbus.config import ENDPOINT_RULE, ModbusDevice
from collector.config.base import parse_endpoint
from simulators.machine import MachineModel
from simulators.tasks import cancel_tasks

__all__ = ["SIM_IDENTIFICATION", "ModbusServerSim", "UnitStore"]

log = logging.getLogger(__name__)

# function code -> table it reads or writes
_FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete_input", 4: "input_register",
             3: "holding_register", 6: "holding_register", 16: "holding_register", 22: "holding_register",
             23: "holding_register"}
_WRITE_FCS = frozenset({5, 6, 15, 16})
_TABLES = ("coil", "discrete_input", "input_register", "holding_register")

SIM_IDENTIFICATION: dict[int, str] = {0x00: "shopfloor-collector", 0x01: "SIMULATOR", 0x02: "1.0",
                                      0x04: "shopfloor-collector simulator (Modbus)"}
"""FC 43/14 objects every simulated unit answers (0x05 ModelName is the device id): a collector that reads
them marks the device 模拟设备 and never counts it as networked unless `indicators.allow_simulated`."""


class UnitStore:
    """The four tables of one simulated unit and the machine model that fills them."""

    def __init__(self, device: ModbusDevice, model: MachineModel) -> None:
        self.device = device
        self.model = model
        self.codecs: list[TagCodec] = [compile_tag(t, device.byte_order) for t in [*device.tags, *device.identity]]
        self.identification: dict[int, str] | None = {**SIM_IDENTIFICATION, 0x05: device.id}
        sizes = dict.fromkeys(_TABLES, 0)
        for c in self.codecs:
            sizes[c.table] = max(sizes[c.table], c.address + c.size)
        # bits: bytearray of 0/1; registers: unsigned 16-bit array
        self.tables: dict[str, bytearray | array[int]] = {
            name: (bytearray(n) if name in ("coil", "discrete_input") else array("H", bytes(2 * n)))
            for name, n in sizes.items()
        }
        sim = device.simulate
        self.exception_addresses = sorted(set(sim.exception_addresses))
        self.exception_code = ExcCodes(sim.exception_code)
        self.delay = sim.delay
        self.silent = sim.silent
        self.update_interval = sim.update_interval
        self.truncate_to = 0  # bytes kept of each of the next `truncate_left` answers
        self.truncate_left = 0
        # every request served, as (function code, address, count): tests prove what reached the device
        self.requests: deque[tuple[int, int, int]] = deque(maxlen=100_000)
        # addresses a client wrote: the machine model no longer overwrites them (a setpoint stays set)
        self.held: dict[str, set[int]] = {name: set() for name in _TABLES}
        self.write_exception: ExcCodes | None = None  # `refuse_writes`: every write answered with this code

    @property
    def writes(self) -> list[tuple[int, int, int]]:
        """The write requests (FC 5, 6, 15, 16) among `requests`."""
        return [r for r in self.requests if r[0] in _WRITE_FCS]

    def update(self) -> None:
        """Advance the model one tick and write every tag's value into the tables."""
        self.model.tick()
        value = self.model.value
        tables = self.tables
        held = self.held
        for c in self.codecs:
            if held[c.table] and not held[c.table].isdisjoint(range(c.address, c.address + c.size)):
                continue
            words = c.encode_value(value(c.name))
            table: Any = tables[c.table]
            if c.bit is not None and not c.is_bits:
                mask = 1 << c.bit
                table[c.address] = (table[c.address] | mask) if words[0] else (table[c.address] & ~mask)
            elif c.size == 1:
                table[c.address] = words[0]
            elif c.is_bits:
                table[c.address:c.address + c.size] = bytearray(words)
            else:
                table[c.address:c.address + c.size] = array("H", words)

    def check(self, table: str, address: int, count: int) -> ExcCodes | None:
        """The exception a request for `count` addresses from `address` gets, or None if it may be served."""
        if address + count > len(self.tables[table]) or count < 1:
            return ExcCodes.ILLEGAL_ADDRESS
        exc = self.exception_addresses
        if exc:
            i = bisect.bisect_left(exc, address)
            if i < len(exc) and exc[i] < address + count:
                return self.exception_code
        return None


class _Datastore(ModbusServerContext):
    """Answers pymodbus's server from the units' arrays.

    Subclasses ModbusServerContext only because that is the type pymodbus 3.16's server accepts for a
    custom store (`old_simulator=True` makes it call us directly); the deprecated base `__init__`, which
    builds SimDevices and warns, is deliberately not called.
    """

    def __init__(self, units: dict[int, UnitStore], answer_unknown: bool = True) -> None:
        self.units = units
        self.answer_unknown = answer_unknown  # TCP gateways answer 0B for an unknown unit; RS-485 is silent
        self.old_simulator = True
        self.simdevices = []
        self._devices = {}

    def device_ids(self) -> list[int]:
        return list(self.units)

    async def _unit(self, device_id: int) -> UnitStore | None:
        unit = self.units.get(device_id)
        if unit is None:
            if not self.answer_unknown:
                raise NoSuchIdException(f"no unit {device_id} on this line")
            return None
        if unit.silent:
            # with ignore_missing_devices=True the server sends nothing: the client times out
            raise NoSuchIdException(f"unit {device_id} is silent")
        if unit.delay:
            await asyncio.sleep(unit.delay)
        return unit

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        unit = await self._unit(device_id)
        if unit is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        if func_code not in _WRITE_FCS:  # pymodbus reads a written coil back for its answer: not a request
            unit.requests.append((func_code, address, count))
        table = _FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        exc = unit.check(table, address, count)
        if exc is not None:
            return exc
        return list(unit.tables[table][address:address + count])

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        unit = await self._unit(device_id)
        if unit is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        unit.requests.append((func_code, address, len(values)))
        if unit.write_exception is not None:
            return unit.write_exception
        table = _FC_TABLE.get(func_code)
        if table is None or table in ("discrete_input", "input_register"):
            return ExcCodes.ILLEGAL_FUNCTION
        exc = unit.check(table, address, len(values))
        if exc is not None:
            return exc
        store = unit.tables[table]
        for i, v in enumerate(values):
            store[address + i] = int(v) & (1 if table == "coil" else 0xFFFF)
            unit.held[table].add(address + i)
        return None


class _DeviceIdentification(ReadDeviceInformationRequest):
    """FC 43/14 answered per unit from `UnitStore.identification` (pymodbus's own answer is one identity per
    process). `sub_function_code` stays -1 so pymodbus's decoder keeps this class instead of its own."""

    sub_function_code = -1

    @classmethod
    def decode_sub_function_code(cls, data: bytes) -> int:
        return -1

    def decode(self, data: bytes) -> None:
        mei, self.read_code, self.object_id = data[0], data[1], data[2]
        self.mei_type = mei

    async def datastore_update(self, context: Any, device_id: int) -> ModbusPDU:
        store: _Datastore = context
        unit = await store._unit(device_id)
        if unit is None:
            return ExceptionResponse(self.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        if getattr(self, "mei_type", 0x0E) != 0x0E or unit.identification is None:
            return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_FUNCTION)
        if not 1 <= self.read_code <= 4:
            return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_VALUE)
        wanted = {1: range(0, 3), 2: range(0, 7), 3: range(0, 256), 4: range(self.object_id, self.object_id + 1)}
        objects = {oid: text.encode() for oid, text in unit.identification.items()
                   if oid in wanted[self.read_code] and (self.read_code == 4 or oid >= self.object_id)}
        if not objects:
            return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_ADDRESS)
        resp = ReadDeviceInformationResponse(read_code=self.read_code, information=objects, dev_id=device_id,
                                             transaction_id=self.transaction_id)
        resp.conformity = 0x82  # basic + regular, stream and individual access
        return resp


class _PipelinedHandler(ServerRequestHandler):
    """A connection of a simulator that takes several outstanding requests.

    pymodbus 3.16's handler decodes one frame per `data_received` (the rest of the segment waits for the next
    one) and answers `last_pdu` from a task scheduled later, which the next frame may have overwritten by
    then. This one decodes every whole frame of a segment and answers each request in its own task, with its
    own PDU, as the Modbus TCP spec allows (answers in the order they are ready)."""

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        used = 0
        while used < len(data):
            try:
                n = TransactionManager.callback_data(self, data[used:] if used else data, addr)
            except ModbusIOException as exc:  # as pymodbus answers an undecodable request
                self.server_send(ExceptionResponse(exc.fcode or 0, exception_code=ExcCodes.ILLEGAL_FUNCTION,
                                                   device_id=exc.dev_id, transaction=exc.transaction_id), addr)
                return len(data)
            pdu = self.last_pdu
            if pdu is not None:
                self.loop.create_task(self._answer(pdu, addr))
            if not n or pdu is None:
                break
            used += n
        return used

    async def _answer(self, pdu: ModbusPDU, addr: tuple[Any, ...] | None) -> None:
        """ServerRequestHandler.handle_request for one given request."""
        server: Any = self.server
        try:
            response = await pdu.datastore_update(server.context, pdu.dev_id)
        except NoSuchIdException:
            if server.ignore_missing_devices:
                return  # the client times out
            response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        except Exception:
            log.exception("modbus sim: answering %s failed", pdu)
            response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        if self.transport is not None:
            self.server_send(response, addr)


class _PipelinedTcpServer(ModbusTcpServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _PipelinedHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


def _exist(*paths: Path) -> bool:
    return all(p.exists() for p in paths)


class ModbusServerSim:
    """Serve every given device behind one Modbus endpoint, one unit id each.

    `models` holds each device's MachineModel (by device id) so tests and fault injection can force states.
    The control methods switch faults per device at run time (they take effect with the next request).
    """

    def __init__(self, endpoint_url: str, devices: list[ModbusDevice], serve_port: str | None = None,
                 pipelining: bool | None = None) -> None:
        endpoint = parse_endpoint(endpoint_url, ENDPOINT_RULE)
        if endpoint.scheme not in ("tcp", "rtu+tcp", "serial"):
            raise ValueError(f"the Modbus simulator serves tcp://, rtu+tcp:// and serial:// endpoints "
                             f"(got '{endpoint_url}')")
        self.endpoint = endpoint
        self.scheme = endpoint.scheme
        self.host: str = endpoint.host
        # 0: any free port, see .port after start(); urlsplit's default would be 502
        given = urlsplit(endpoint_url).port if endpoint.scheme != "serial" else None
        self.port: int = given if given is not None else endpoint.port
        self.endpoint_url = endpoint_url
        self.serve_port = serve_port
        self.models: dict[str, MachineModel] = {}
        self.units: dict[int, UnitStore] = {}
        self._by_device: dict[str, UnitStore] = {}
        for dev in devices:
            self.add_device(dev)
        self._pipelining = pipelining
        self._store = _Datastore(self.units, answer_unknown=self.scheme == "tcp")
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._socat: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pipelining(self) -> bool:
        """Several outstanding requests answered (tcp:// only): as asked, else when a device behind the endpoint
        asks for them, including one added later (`add_device`, the Workshop's shared gateways)."""
        if self.scheme != "tcp":
            return False
        if self._pipelining is not None:
            return self._pipelining
        return any(u.device.max_outstanding > 1 for u in self.units.values())

    def add_device(self, dev: ModbusDevice) -> None:
        """Serve one more unit id behind this endpoint (before `start`): how the Workshop shares one server
        among the devices of one gateway."""
        if dev.unit_id in self.units:
            raise ValueError(f"devices '{self.units[dev.unit_id].device.id}' and '{dev.id}' share unit id "
                             f"{dev.unit_id} on {self.endpoint_url}")
        model = MachineModel(dev.id, dev.simulate, [*dev.tags, *dev.identity])
        unit = UnitStore(dev, model)
        self.models[dev.id] = model
        self.units[dev.unit_id] = unit
        self._by_device[dev.id] = unit

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Fill the tables, bind and listen; returns once clients can connect (`self.port` is the real port)."""
        if self._server is not None:
            return
        for unit in self.units.values():
            unit.update()
        server: ModbusTcpServer | ModbusSerialServer
        if self.scheme == "serial":
            from adapters.modbus.line import serial_settings

            settings = serial_settings(self.endpoint)
            port = self.serve_port or await self._start_pty_pair()
            server = ModbusSerialServer(self._store, framer=FramerType.RTU, port=port,
                                        ignore_missing_devices=True, custom_pdu=[_DeviceIdentification],
                                        trace_packet=self._cut,
                                        **settings)
        else:
            framer = FramerType.RTU if self.scheme == "rtu+tcp" else FramerType.SOCKET
            server_type = _PipelinedTcpServer if self.pipelining else ModbusTcpServer
            server = server_type(self._store, address=(self.host, self.port), framer=framer,
                                     ignore_missing_devices=True, custom_pdu=[_DeviceIdentification],
                                     trace_packet=self._cut)
        try:
            await server.serve_forever(background=True)
        except Exception as exc:  # RuntimeError from pymodbus, termios/pyserial errors on a serial port
            await self._stop_pty_pair()
            where = (self.serve_port or self.endpoint.path) if self.scheme == "serial" else f"{self.host}:{self.port}"
            raise OSError(f"cannot listen on {where}: {exc}") from None
        if self.scheme != "serial":
            listener: Any = server.transport
            with contextlib.suppress(AttributeError, IndexError, TypeError):
                self.port = listener.sockets[0].getsockname()[1]
        self._server = server
        self._tasks = [asyncio.create_task(self._run(unit), name=f"modbus-sim:{unit.device.id}")
                       for unit in self.units.values()]

    async def _start_pty_pair(self) -> str:
        """`socat` links the endpoint's path (the collector's end) to `<path>.sim` (ours); returns ours."""
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("serving Modbus RTU on a pseudo-terminal needs socat: apt-get install socat")
        collector_end = Path(self.endpoint.path)
        sim_end = Path(f"{collector_end}.sim")
        collector_end.parent.mkdir(parents=True, exist_ok=True)
        for p in (collector_end, sim_end):
            if p.is_symlink():
                p.unlink()
        self._socat = await asyncio.create_subprocess_exec(
            socat, f"pty,raw,echo=0,link={collector_end}", f"pty,raw,echo=0,link={sim_end}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        for _ in range(200):
            if _exist(collector_end, sim_end):
                return str(sim_end)
            if self._socat.returncode is not None:
                break
            await asyncio.sleep(0.01)
        await self._stop_pty_pair()
        raise RuntimeError(f"socat did not create the pty pair {collector_end} / {sim_end}")

    async def _stop_pty_pair(self) -> None:
        proc, self._socat = self._socat, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 2)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def _run(self, unit: UnitStore) -> None:
        """Tick one unit's model every `simulate.update_interval`; a failing tick is logged, not fatal."""
        while True:
            await asyncio.sleep(unit.update_interval)
            try:
                unit.update()
            except Exception:
                log.exception("modbus sim: updating %s failed", unit.device.id)

    async def stop(self) -> None:
        """Stop ticking, close the listener and drop every client connection (clients see the device go)."""
        tasks, self._tasks = self._tasks, []
        await cancel_tasks(*tasks)
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
            await asyncio.sleep(0)  # let the transports deliver their close
        await self._stop_pty_pair()

    # -- fault injection (run time)

    def set_silent(self, device_id: str, silent: bool = True) -> None:
        """Make a unit stop answering (its requests time out) or answer again."""
        self._by_device[device_id].silent = silent

    def set_delay(self, device_id: str, seconds: float) -> None:
        """Answer every request of a unit `seconds` late (0: on time)."""
        self._by_device[device_id].delay = max(0.0, float(seconds))

    def set_exceptions(self, device_id: str, addresses: Sequence[int], code: int = 2) -> None:
        """Answer exception `code` (2 illegal address, 4 device failure, ...) to any request that touches one
        of `addresses` (0-based, any table); an empty list clears them."""
        unit = self._by_device[device_id]
        unit.exception_addresses = sorted(set(addresses))
        unit.exception_code = ExcCodes(code)

    def refuse_writes(self, device_id: str, code: int | None = 4) -> None:
        """Answer every write request of the unit with exception `code` (a PLC in RUN mode, a locked
        parameter); None accepts writes again."""
        self.unit(device_id).write_exception = None if code is None else ExcCodes(code)

    def set_identification(self, device_id: str, objects: dict[int, str] | None) -> None:
        """The FC 43/14 objects a unit answers (object id -> text); None: answer exception 01 (unsupported)."""
        self._by_device[device_id].identification = None if objects is None else dict(objects)

    def truncate_answers(self, device_id: str, keep: int, count: int = 1) -> None:
        """Send only the first `keep` bytes of the unit's next `count` answers (the rest never comes, the
        connection stays open): a device or gateway that cuts a frame short and then answers the retry."""
        if keep < 1:
            raise ValueError("keep at least 1 byte (a silent unit is set_silent)")
        unit = self._by_device[device_id]
        unit.truncate_to = keep
        unit.truncate_left = max(0, count)

    def _cut(self, sending: bool, packet: bytes) -> bytes:
        """pymodbus's trace_packet hook (every frame in and out): applies `truncate_answers`."""
        if not sending or len(packet) < 8:
            return packet
        unit = self.units.get(packet[6] if self.scheme == "tcp" else packet[0])  # MBAP unit id / RTU address
        if unit is None or unit.truncate_left <= 0:
            return packet
        unit.truncate_left -= 1
        return packet[:unit.truncate_to]

    def drop_connections(self) -> int:
        """Close every client connection now (the listener stays): clients see the device drop them.
        Returns how many were dropped; a serial line has no connection to drop (0)."""
        server = self._server
        if server is None or self.scheme == "serial":
            return 0
        conns = list(server.active_connections.values())
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        return len(conns)

    def faults(self, device_id: str) -> dict[str, Any]:
        """The faults currently injected for a device."""
        unit = self._by_device[device_id]
        return {"silent": unit.silent, "delay": unit.delay, "exception_addresses": list(unit.exception_addresses),
                "exception_code": int(unit.exception_code), "truncate_to": unit.truncate_to,
                "truncate_left": unit.truncate_left}

    def unit(self, device_id: str) -> UnitStore:
        """The unit serving a device (tests poke its tables)."""
        return self._by_device[device_id]

    async def __aenter__(self) -> ModbusServerSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
