"""Property: whatever a device's byte stream does, `MbapClient` never returns a wrong value.

The stream is scripted per try: the answers to this and earlier tries (whole, cut short, late), stray frames
and junk, split into arbitrary `data_received` chunks. The client may time out, raise or return the right
registers; it must never return others. The transport is a fake (the chunk boundaries must be exact, which
real TCP does not promise); tests/test_modbus_tcp.py and tests/test_modbus_faults.py cover the same over TCP.

What the model leaves out, because no Modbus TCP client can tell it from a device that means it (MBAP has no
checksum): bytes that spell a well-formed answer to the pending try with other values, i.e. junk containing
the pending transaction id, or a device that cuts its answer to the pending try short and then goes on
sending in the same try (the rest of the frame would be junk read as registers). So junk has no byte 1..4
(the transaction ids in play), and a cut-short answer to the pending try is the last thing in that try.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pymodbus.exceptions import ConnectionException, ModbusException

from adapters.modbus.tcp import MbapClient
from tests.test_modbus_tcp import Request, answer, frame

UNIT = 1
MAX_TRIES = 4


@dataclass
class Script:
    """What the device sends during each try (index 0 = the first try), as chunks fed one by one."""

    count: int
    retries: int
    chunks: list[list[bytes]]
    clean: bool = False  # no cut answer or noise, and some try gets its own answer: it must succeed


class FakeTransport(asyncio.Transport):
    """Feeds the scripted chunks of try n to the client as soon as it writes its n-th request."""

    def __init__(self, client: MbapClient, script: Script) -> None:
        super().__init__()
        self.client = client
        self.script = script
        self.requests: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.requests.append(bytes(data))
        n = len(self.requests) - 1
        for chunk in self.script.chunks[n] if n < len(self.script.chunks) else ():
            if self.closed:
                break  # a closed transport delivers nothing more
            self.client.data_received(chunk)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def request(tid: int, count: int) -> Request:
    return Request(tid, UNIT, 3, 0, count)


def right(count: int) -> list[int]:
    return [1000 + i for i in range(count)]


async def run(script: Script) -> list[int] | Exception:
    client = MbapClient("device", 502, timeout=0.002, retries=script.retries)
    transport = FakeTransport(client, script)
    client._connecting = True  # as connect() has it while the connection is being made
    client.connection_made(transport)
    client._connecting = False
    try:
        got = await client.read_holding_registers(0, count=script.count, device_id=UNIT)
    except (ModbusException, ConnectionException) as exc:  # ModbusIOException is a ModbusException
        return exc
    finally:
        client.close()
    tids = [struct.unpack_from(">H", r)[0] for r in transport.requests]
    assert tids == list(range(1, len(tids) + 1))
    return list(got.registers)


def check(script: Script) -> None:
    outcome = asyncio.run(run(script))
    if isinstance(outcome, list):
        assert outcome == right(script.count), f"wrong value returned: {outcome}"
    else:
        assert not script.clean, f"a clean stream failed: {outcome!r}"


# -- the stream

junk_bytes = st.binary(min_size=1, max_size=12).map(lambda b: bytes(x if x == 0 or x > MAX_TRIES else x | 0x10
                                                                    for x in b))
stray_words = st.lists(st.integers(0x10, 0xFF).flatmap(lambda hi: st.integers(0x10, 0xFF).map(
    lambda lo: hi << 8 | lo)), min_size=1, max_size=10)


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    count = draw(st.integers(1, 10))
    retries = draw(st.integers(0, MAX_TRIES - 1))
    tries = retries + 1
    pieces: list[list[bytes]] = [[] for _ in range(tries)]
    sealed = [False] * tries  # the try's own answer came cut short: the device sends nothing more in it
    clean = True  # no cut answer, no noise
    on_time = False  # some try got its own whole answer in time
    due = 0  # the server answers in order: an answer is never sent before the previous one
    for t in range(tries):  # the device's answer to try t
        whole = answer(request(t + 1, count))
        fate = draw(st.sampled_from(["whole", "cut", "none"]))
        due = max(due, t + draw(st.sampled_from([0, 0, 0, 1, 2])))
        if fate == "none" or due >= tries:
            continue
        if fate == "whole":
            pieces[due].append(whole)
            on_time = on_time or due == t
        else:
            pieces[due].append(whole[:draw(st.integers(1, len(whole) - 1))])
            sealed[due] = due == t
            clean = False
    for t in range(tries):  # noise between the answers
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["junk", "other tid", "other unit", "other function"]))
            clean = False
            req = request(t + 1, count)
            if kind == "junk":
                noise = draw(junk_bytes)
            elif kind == "other tid":
                noise = answer(req, tid=draw(st.integers(0x1010, 0xFEFE)), words=draw(stray_words))
            elif kind == "other unit":
                noise = answer(req, unit=UNIT + 1, words=[0x5555] * count)
            else:
                noise = frame(req.tid, UNIT, bytes([0x84, 2]))  # an exception to another function code
            last = len(pieces[t]) - 1 if sealed[t] else len(pieces[t])
            pieces[t].insert(draw(st.integers(0, last)), noise)
    chunks: list[list[bytes]] = []
    for parts in pieces:  # every split of each try's bytes into data_received calls
        stream = b"".join(parts)
        cuts = sorted(draw(st.sets(st.integers(1, len(stream) - 1), max_size=6))) if len(stream) > 1 else []
        bounds = [0, *cuts, len(stream)]
        chunks.append([stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a])
    return Script(count, retries, chunks, clean and on_time)


def spliced(count: int, kept: int, late: bool) -> Script:
    """The field trial: try 1's answer cut after `kept` bytes, then try 2's answer in full (in the second
    try, or `late`: the cut answer arrives in the second try, just before the retry's)."""
    first = answer(request(1, count))[:kept]
    second = answer(request(2, count))
    return Script(count, 1, [[], [first, second]] if late else [[first], [second]])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts())
@example(spliced(10, 15, late=False))
@example(spliced(10, 15, late=True))
def test_the_client_never_returns_a_wrong_value(script: Script) -> None:
    check(script)


def test_every_cut_and_split_of_a_truncated_answer_followed_by_the_retry() -> None:
    """Exhaustive for the field trial's 10 registers: every length the first answer is cut to, every place
    the stream is split, cut answer on time or late."""
    count = 10
    whole = len(answer(request(1, count)))
    for late in (False, True):
        for kept in range(1, whole):
            base = spliced(count, kept, late)
            stream = b"".join(base.chunks[1])
            for split in range(1, len(stream)):
                head = [] if late else base.chunks[0]
                check(Script(count, 1, [head, [stream[:split], stream[split:]]]))
                check(Script(count, 2, [head, [stream[:split], stream[split:]], [answer(request(3, count))]]))


def test_a_clean_stream_is_answered() -> None:
    """Liveness beside safety: the checks above would also pass for a client that never answers."""
    check(Script(10, 0, [[answer(request(1, 10))]], clean=True))
    check(Script(10, 2, [[], [], [answer(request(3, 10))]], clean=True))
