"""float32 decode cost: the plain decoder (decode + finite check, as before the shortest form) against the
codec's float32 converter (shortest decimal, memoised), alternated in one process; and encode_data per reading.

    .venv/bin/python bench/float32.py [sensor|random]

`sensor`: values with 1-4 decimals, as a meter stores them; `random`: any finite float32 bit pattern (8-9
digits, the worst case). "every value new" clears the memo before each pass (values never seen before).
Prints median/min nanoseconds of 15 alternated rounds.
"""

from __future__ import annotations

import math
import random
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import collector.model as model  # noqa: E402
from adapters.modbus.codec import TagCodec  # noqa: E402
from collector.config import ModbusTag  # noqa: E402
from collector.model import Batch, Reading  # noqa: E402
from collector.sinks.mqtt import encode_data  # noqa: E402

Conv = Callable[[Sequence[int], int], tuple[Any, str]]


def values(kind: str, rng: random.Random) -> list[float]:
    if kind == "sensor":
        return [round(rng.uniform(0, 500), rng.choice((1, 2, 3, 4))) for _ in range(1000)]
    out: list[float] = []
    while len(out) < 1000:
        x = struct.unpack(">f", struct.pack(">I", rng.getrandbits(32)))[0]
        if math.isfinite(x):
            out.append(x)
    return out


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "sensor"
    words: list[int] = []
    for v in values(kind, random.Random(7)):
        words += struct.unpack(">2H", struct.pack(">f", v))
    new: Conv = TagCodec(ModbusTag(name="f", table="holding_register", address=0, type="float32")).convert
    pack_w, unpack_v = struct.Struct(">2H").pack, struct.Struct(">f").unpack

    def old(w: Sequence[int], o: int) -> tuple[Any, str]:
        v = unpack_v(pack_w(w[o], w[o + 1]))[0]
        return (v, "good") if math.isfinite(v) else (None, "bad_decode")

    def t_conv(conv: Conv, clear: bool = False) -> float:
        started = time.perf_counter()
        for _ in range(10):
            if clear:
                model._SHORTEST.clear()
            for o in range(0, len(words), 2):
                conv(words, o)
        return (time.perf_counter() - started) / (5 * len(words)) * 1e9

    now = time.time()

    def batches(conv: Conv) -> list[Batch]:
        vs = [conv(words, o)[0] for o in range(0, len(words), 2)]
        return [Batch("d", i, now, [Reading("d", f"t{j}", vs[(i * 50 + j) % len(vs)], "V", "good", now, now)
                                    for j in range(50)]) for i in range(100)]

    def t_enc(bs: list[Batch]) -> float:
        started = time.perf_counter()
        for _ in range(5):
            for b in bs:
                encode_data(b)
        return (time.perf_counter() - started) / (5 * 100 * 50) * 1e9

    bo, bn = batches(old), batches(new)
    r: dict[str, list[float]] = {k: [] for k in ("decode before", "decode after", "decode after, every value new",
                                                 "encode_data before", "encode_data after")}
    for _ in range(15):
        r["decode before"].append(t_conv(old))
        r["decode after"].append(t_conv(new))
        r["decode after, every value new"].append(t_conv(new, clear=True))
        r["encode_data before"].append(t_enc(bo))
        r["encode_data after"].append(t_enc(bn))
    for name, times in r.items():
        print(f"{kind:7} {name:31} median {statistics.median(times):6.0f} ns  min {min(times):6.0f} ns")
    print(f"{kind:7} JSON bytes per reading: before {len(encode_data(bo[0])) // 50}, "
          f"after {len(encode_data(bn[0])) // 50}")


if __name__ == "__main__":
    main()
