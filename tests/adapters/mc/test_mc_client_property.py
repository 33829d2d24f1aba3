"""Property: whatever a PLC's byte stream does, `McClient` never returns a wrong value.

A session of several reads on one connection (3E answers carry no serial number, so the danger is an answer,
or part of one, taken for another request's). The stream is scripted per request: its own answer (whole, cut
short, missing, an end code), the late answer to the previous request, answers with another route or size,
junk, bytes while no request is pending; split into arbitrary `data_received` chunks. The client may time
out, raise or return the right words; it must never return others. The transport is a fake (the chunk
boundaries must be exact); tests/adapters/mc/test_mc_sim.py covers the real TCP path.

What the model leaves out, because no 3E client can tell it from a PLC that means it (the frame has neither
a serial number nor a checksum): a well-formed answer of the pending request's size, route and end code 0
with other values that is not a late answer (a late answer only comes after a timeout, and a timeout closes
the connection), and bytes inside the pending request's own answer. So junk never starts with D0, and a cut
answer to the pending request is the last thing in its window.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.mc.client import McClient, McError
from tests.adapters.mc.helpers import answer

D = 0xA8


@dataclass
class Script:
    counts: list[int]  # points of each request
    windows: list[list[bytes]]  # chunks the PLC sends while request k is pending
    between: list[list[bytes]]  # chunks before request k is sent (nothing pending)
    errors: dict[int, int] = field(default_factory=dict)  # request -> the end code its own answer carries
    clean: list[bool] = field(default_factory=list)  # request k and all before it had a clean stream


class FakeTransport(asyncio.Transport):
    def __init__(self, client: McClient, script: Script) -> None:
        super().__init__()
        self.client = client
        self.script = script
        self.writes = 0
        self.closed = False

    def write(self, data: Any) -> None:
        k = self.writes
        self.writes += 1
        for chunk in self.script.windows[k] if k < len(self.script.windows) else ():
            if self.closed:
                break
            self.client.data_received(chunk)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def right(k: int, count: int) -> list[int]:
    return [(k + 1) << 8 | i for i in range(count)]


async def run(script: Script) -> list[Any]:
    client = McClient("plc", 5000, timeout=0.002)
    transport = FakeTransport(client, script)
    client._connecting = True
    client.connection_made(transport)
    client._connecting = False
    outcomes: list[Any] = []
    for k, count in enumerate(script.counts):
        for chunk in script.between[k]:
            if not transport.closed:
                client.data_received(chunk)
        try:
            got = await client.read_words(D, 100 * k, count)
        except McError as exc:
            outcomes.append(exc)
            continue
        outcomes.append(got.end_code if got.end_code else list(got.words()))
    client.close()
    return outcomes


def check(script: Script) -> None:
    outcomes = asyncio.run(run(script))
    for k, outcome in enumerate(outcomes):
        if isinstance(outcome, list):
            assert outcome == right(k, script.counts[k]), f"request {k}: wrong value returned: {outcome}"
        elif isinstance(outcome, int):
            assert outcome == script.errors.get(k), f"request {k}: an end code it was not sent: {outcome:#x}"
        else:
            assert not script.clean[k], f"request {k}: a clean stream failed: {outcome!r}"


junk = st.binary(min_size=1, max_size=12).filter(lambda b: b[0] != 0xD0)


def split(draw: st.DrawFn, parts: list[bytes]) -> list[bytes]:
    stream = b"".join(parts)
    if len(stream) < 2:
        return [stream] if stream else []
    cuts = sorted(draw(st.sets(st.integers(1, len(stream) - 1), max_size=5)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    n = draw(st.integers(1, 4))
    counts = [draw(st.integers(1, 12)) for _ in range(n)]
    windows: list[list[bytes]] = []
    between: list[list[bytes]] = []
    errors: dict[int, int] = {}
    clean: list[bool] = []
    ok = True
    late: bytes | None = None  # the previous request's answer, if it was not delivered in its window
    for k, count in enumerate(counts):
        own = answer(right(k, count))
        before: list[bytes] = []
        if late is not None and draw(st.booleans()):
            before.append(late)  # the late answer comes now: while nothing is pending, or in this window
        late = None
        parts: list[bytes] = []
        if before and draw(st.booleans()):
            parts, before = before, []
        noise_before = draw(st.lists(st.sampled_from(["junk", "route", "size", "subheader"]), max_size=2))
        for kind in noise_before:
            if kind == "junk":
                parts.append(draw(junk))
            elif kind == "route":
                parts.append(answer(right(k, count), station=1))
            elif kind == "size":
                parts.append(answer(right(k, count + draw(st.integers(1, 3)))))
            else:
                parts.append(b"\xd1\x00" + own[2:])
        fate = draw(st.sampled_from(["whole", "whole", "cut", "none", "error"]))
        if fate == "whole":
            parts.append(own)
        elif fate == "error":
            errors[k] = draw(st.sampled_from([0xC056, 0xC05B, 0x4031]))
            parts.append(answer([], end_code=errors[k]))
        elif fate == "cut":
            parts.append(own[:draw(st.integers(1, len(own) - 1))])
            late = own  # its rest never comes; the whole answer might (a slow PLC resending)
        else:
            late = own
        if fate in ("whole", "error") and draw(st.booleans()):
            parts.append(draw(st.sampled_from([own, answer([0x1234])])))  # a repeat after the answer
        ok = ok and not before and not noise_before and fate in ("whole", "error") and len(parts) == 1
        clean.append(ok and fate == "whole")
        windows.append(split(draw, parts))
        between.append(split(draw, before))
    return Script(counts, windows, between, errors, clean)


def spliced(count: int, kept: int) -> Script:
    """Request 0's answer cut after `kept` bytes; request 1 (same size) gets request 0's whole answer first,
    then its own: with no serial number, only closing on the timeout keeps them apart."""
    first = answer(right(0, count))
    return Script([count, count], [[first[:kept]], [first, answer(right(1, count))]], [[], []], {}, [False, False])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts())
@example(spliced(10, 15))
@example(spliced(10, 9))
def test_the_client_never_returns_a_wrong_value(script: Script) -> None:
    check(script)


def test_every_cut_and_split_of_an_answer() -> None:
    """Exhaustive for 10 words: every length the first answer is cut to, then the same-size second request
    receives the rest or the whole first answer, split at every place."""
    count = 10
    first = answer(right(0, count))
    second = answer(right(1, count))
    for kept in range(1, len(first)):
        for tail in (first[kept:] + second, first + second):
            for cut in range(1, len(tail)):
                check(Script([count, count], [[first[:kept]], [tail[:cut], tail[cut:]]], [[], []], {},
                             [False, False]))


def test_a_clean_stream_is_answered_in_any_chunks() -> None:
    """Liveness beside safety: a client that never answers would pass the checks above."""
    own = [answer(right(k, 5)) for k in range(3)]
    check(Script([5, 5, 5], [[own[0]], [own[1][:1], own[1][1:]], [bytes([b]) for b in own[2]]], [[], [], []],
                 {}, [True, True, True]))
    check(Script([5, 5], [[answer([], end_code=0xC056)], [own[1]]], [[], []], {0: 0xC056}, [False, True]))
