"""Property: whatever a device's byte stream does, `MbapClient` never returns a wrong value.

The stream is scripted per try: the answers to this and earlier tries (whole, cut short, late), stray frames
and junk, split into arbitrary `data_received` chunks. The client may time out, raise or return the right
registers; it must never return others. The transport is a fake (the chunk boundaries must be exact, which
real TCP does not promise); tests/adapters/modbus/test_modbus_tcp.py and tests/adapters/modbus/test_modbus_faults.py cover the same over TCP.

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

from adapters.modbus.errors import ConnectionLost, ModbusError
from adapters.modbus.tcp import MbapClient, ReadBatch
from tests.adapters.modbus.test_modbus_tcp import Request, answer, frame

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
    except (ModbusError, ConnectionLost) as exc:  # NoAnswer is a ModbusError
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


# -- several requests in flight (`read_batch` with a window > 1)
#
# The model, as above, widened by what pipelining brings: the device answers the requests it holds in any
# order, each whole, late (after the answers to the next write's requests), cut short, not at all, garbled
# (a byte count off), or under the transaction id of another request in flight; stray frames of other
# transactions come between. Left out, as for one request: after an answer was cut short, anything that is
# not an answer to a request in flight (a stray frame, or a mixed-up transaction id whose own request gets
# its answer too), since no client can tell it from the rest of the cut answer.

FATES = ("whole", "whole", "whole", "whole", "late", "cut", "splice", "none", "garbled", "mixed")


class PipeDevice(asyncio.Transport):
    """Answers what the client writes, as drawn, through `data_received` calls scheduled on the loop. Time
    is the device's too: once it has sent what it will and the client wrote nothing new, the oldest request's
    timeout passes (the client's own timer is set far away), so every run of an example draws the same."""

    def __init__(self, client: MbapClient, data: st.DataObject) -> None:
        super().__init__()
        self.client = client
        self.data = data
        self.closed = False
        self.cut = False  # an answer was cut short: only answers to requests in flight may follow
        self.later: list[tuple[Request, bytes]] = []
        self.clean = True
        self.writes = 0
        self.error: BaseException | None = None  # raised by a draw inside a loop callback (hypothesis's own)

    def write(self, raw: Any) -> None:
        self.writes += 1
        raw = bytes(raw)
        pool: list[tuple[str, bytes]] = []  # (kind, bytes): kind "noise" may not follow a cut piece
        reqs = []
        for k in range(0, len(raw), 12):
            tid, _p, _l, unit, fc, address, count = struct.unpack_from(">HHHBBHH", raw, k)
            reqs.append(Request(tid, unit, fc, address, count))
        in_flight = reqs + [r for r, _b in self.later]
        splices: list[bytes] = []
        for req in reqs:
            fate = self.data.draw(st.sampled_from(FATES), label="fate")
            others = [r for r in in_flight if r.tid != req.tid]
            if fate == "mixed" and not others:
                fate = "whole"
            self.clean = self.clean and fate == "whole"
            whole = answer(req)
            if fate == "whole":
                pool.append(("answer", whole))
            elif fate == "late":
                self.later.append((req, whole))
            elif fate == "splice":  # cut so that another whole answer fits exactly into the rest of the frame
                splices.append(whole)
            elif fate == "cut":
                pool.append(("cut", whole[:self.data.draw(st.integers(1, len(whole) - 1), label="kept")]))
            elif fate == "garbled":
                pool.append(("answer", whole[:8] + bytes([whole[8] + 2]) + whole[9:]))
            elif fate == "mixed":
                pool.append(("noise", answer(req, tid=self.data.draw(st.sampled_from(others), label="as").tid)))
        for whole in splices:
            fits = [k for k, (kind, b) in enumerate(pool) if kind == "answer" and len(b) < len(whole) - 1]
            if fits:
                _kind, swallowed = pool.pop(self.data.draw(st.sampled_from(fits), label="swallowed"))
                pool.append(("cut", whole[:len(whole) - len(swallowed)] + swallowed))
            else:
                pool.append(("answer", whole))
        if self.data.draw(st.booleans(), label="stray"):
            self.clean = False
            pool.append(("noise", answer(reqs[0], tid=self.data.draw(st.integers(0x1010, 0xFEFE), label="tid"),
                                         words=[0x5555] * reqs[0].count)))
        pieces = [("answer", b) for _r, b in self.later] if pool else []
        if pool:
            self.later = []
        for kind, piece in self.data.draw(st.permutations(pool), label="order"):
            if kind == "noise" and self.cut:
                continue  # left out of the model (see above)
            self.cut = self.cut or kind == "cut"
            pieces.append((kind, piece))
        stream = b"".join(piece for _kind, piece in pieces)
        cuts = sorted(self.data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=4), label="split")) \
            if len(stream) > 1 else []
        bounds = [0, *cuts, len(stream)]
        chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
        asyncio.get_running_loop().call_soon(self._deliver, chunks)

    def _deliver(self, chunks: list[bytes]) -> None:
        writes = self.writes
        try:
            for chunk in chunks:
                if self.closed:
                    return
                self.client.data_received(chunk)  # may write, i.e. draw
        except BaseException as exc:  # hand it to the test instead of the loop's exception handler
            self.error = exc
            self.client.close()
            return
        if self.writes == writes:  # the client waits: let its oldest request time out
            asyncio.get_running_loop().call_soon(self._time_passes)

    def _time_passes(self) -> None:
        run = self.client._run
        if self.closed or run is None or run.future.done():
            return
        for i in run.order:
            run.deadline_at[i] = 0.0
        self.client._expire(run)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def run_pipelined(data: st.DataObject) -> None:
    counts = data.draw(st.lists(st.integers(1, 6), min_size=2, max_size=7), label="counts")
    window = data.draw(st.integers(2, 4), label="window")
    batch = ReadBatch(UNIT, [(3, 10 * k, c) for k, c in enumerate(counts)])
    client = MbapClient("device", 502, timeout=1000.0, retries=0)
    device = PipeDevice(client, data)
    client._connecting = True
    client.connection_made(device)
    client._connecting = False
    try:
        got = await client.read_batch(batch, window)
    except (ModbusError, ConnectionLost):
        if device.error is not None:
            raise device.error from None
        assert not device.clean, "a clean stream failed"
        return
    finally:
        client.close()
    if device.error is not None:
        raise device.error
    for k, a in enumerate(got):
        if a is not None:
            assert list(a.registers) == [1000 + 10 * k + i for i in range(counts[k])], f"wrong value: {a}"
    if device.clean:
        assert None not in got, f"a clean stream left answers out: {got}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_several_in_flight_never_return_a_wrong_value(data: st.DataObject) -> None:
    asyncio.run(run_pipelined(data))
