"""Hostile configs: mutations of config/demo.yaml and config/workshop.example.yaml (type swaps, huge and
non-finite numbers, wrong encodings, duplicate keys, wildcard and placeholder topics, missing files, bad ports,
deep nesting, alias bombs, ...) from a fixed seed.

`collector check` must never raise (exit 0 or 2, each error line naming its field), and what it accepts,
`collector run` must start: a real subprocess reaching READY=1 on a notify socket, then SIGTERM and exit 0.
`check` runs in-process (an exception there is the traceback a user would see); `run` runs for one accepted
config of every mutation kind plus a sample, a few at a time, to keep the test near a minute on a loaded box.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import math
import os
import random
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.cli import main
from tests.support.broker import MosquittoProcess, free_port
from tests.test_watchdog import FakeNotifySocket

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "config" / "demo.yaml", ROOT / "config" / "workshop.example.yaml"]
SEED = 20261201
CONFIGS = 95  # 5 of each kind
RUNS = 10  # `run` starts: every kind with an accepted config first, then a sample of the rest
PARALLEL_RUNS = 4
# An error line: a field path (devices[2].tags[0].type), `line N`, an env variable, or (top level).
NAMED = re.compile(r"^  (\(top level\)|line \d+|COLLECTOR_\w+|[A-Za-z_][\w\-]*(\[\d+\])*(\.[^\s:]+)*)[: ]")

Data = dict[str, Any]
Mutation = Callable[[random.Random, Data, Path], "bytes | Data"]


def prepared(source: Path, tmp: Path, broker_port: int) -> Data:
    """The example as a gateway in this test would run it: private state, broker and HTTP port."""
    data: Data = yaml.safe_load(source.read_text(encoding="utf-8"))
    data["state_dir"] = str(tmp / "state")
    data["mqtt"] = {**data.get("mqtt", {}), "url": f"mqtt://127.0.0.1:{broker_port}"}
    data["http"] = {**data.get("http", {}), "listen": f"127.0.0.1:{free_port()}"}
    for dev in data.get("devices", []):
        if str(dev.get("endpoint", "")).startswith("serial://"):  # no serial port here: one TCP endpoint instead
            dev["endpoint"] = "rtu+tcp://127.0.0.1:1"
    return data


def leaves(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in leaves(v, (*path, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in leaves(v, (*path, i))]
    return [path]


def mappings(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(data, dict):
        return [path] + [p for k, v in data.items() for p in mappings(v, (*path, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in mappings(v, (*path, i))]
    return []


def get(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def put(data: Any, path: tuple[Any, ...], value: Any) -> None:
    get(data, path[:-1])[path[-1]] = value


def pick(rng: random.Random, data: Data, want: Callable[[Any], bool]) -> tuple[Any, ...]:
    choices = [p for p in leaves(data) if p and want(get(data, p))]
    return rng.choice(choices)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------------- mutations


def type_swap(rng: random.Random, d: Data, tmp: Path) -> Data:
    path = pick(rng, d, lambda v: True)
    old = get(d, path)
    put(d, path, rng.choice([v for v in ("text", 7, -3.5, True, None, [], {}, [1, 2], {"a": 1}) if type(v) is not
                             type(old)]))
    return d


def huge_number(rng: random.Random, d: Data, tmp: Path) -> Data:
    put(d, pick(rng, d, is_number), rng.choice([10**40, 1e308, 2**63, -(10**18), 10**15, 2**64 + 1]))
    return d


def bad_number(rng: random.Random, d: Data, tmp: Path) -> Data:
    put(d, pick(rng, d, is_number), rng.choice([-1, 0, -0.0, math.nan, math.inf, -math.inf, 1e-300]))
    return d


def five_thousand_digits(rng: random.Random, d: Data, tmp: Path) -> bytes:
    path = pick(rng, d, is_number)
    put(d, path, 123456789)
    return dump(d).replace(b"123456789", b"9" * rng.choice([31, 5000]), 1)


def encoding(rng: random.Random, d: Data, tmp: Path) -> bytes:
    d["site"]["enterprise_name"] = "江西恒达针织有限公司"
    text = yaml.safe_dump(d, allow_unicode=True, sort_keys=False)
    how = rng.choice(["gbk", "utf-16", "latin-1-bytes", "bom", "nul", "cp1252"])
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if how == "nul":
        return text.encode().replace(b"\n", b"\n\x00", 1)
    if how == "latin-1-bytes":
        return text.encode() + b"# caf\xe9\n"
    return text.encode("gbk" if how in ("gbk", "cp1252") else how, errors="replace")


def duplicate_key(rng: random.Random, d: Data, tmp: Path) -> bytes:
    lines = yaml.safe_dump(d, allow_unicode=True, sort_keys=False, default_flow_style=False).splitlines()
    candidates = [i for i, ln in enumerate(lines) if re.match(r"^\s*[A-Za-z_]+: \S", ln) and "- " not in ln[:4]]
    i = rng.choice(candidates)
    lines.insert(i + 1, lines[i])
    return ("\n".join(lines) + "\n").encode()


TOPICS = ["factory/#", "a/+/b", "+", "{plant}/x", "factory/{enterprise", "{0}/x", "{enterprise!r}/x",
          "{workshop:>10}", "$SYS/x", "/lead/{workshop}", "a//b", "", "x" * 2000, "factory/{enterprise}/{workshop}/",
          "fa ctory/{enterprise}", "a\u0000b", "工厂/{enterprise}", "{{literal}}/{workshop}", "}"]


def topic(rng: random.Random, d: Data, tmp: Path) -> Data:
    d["mqtt"]["topic_root"] = rng.choice(TOPICS)
    return d


def missing_file(rng: random.Random, d: Data, tmp: Path) -> Data:
    (tmp / "empty").write_text("")
    (tmp / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    gone = str(tmp / "nowhere" / "file")
    case = rng.randrange(10)
    m = d["mqtt"]
    if case == 0:
        m["password_file"] = gone
    elif case == 1:
        m["password_file"] = str(tmp / "empty")
    elif case == 2:
        m.update(url=m["url"].replace("mqtt://", "mqtts://"), ca_file=gone)
    elif case == 3:
        m.update(url=m["url"].replace("mqtt://", "mqtts://"), ca_file=str(tmp / "junk.pem"))
    elif case == 4:
        m.update(url=m["url"].replace("mqtt://", "mqtts://"), key_file=str(tmp / "junk.pem"))
    elif case == 5:
        d["assets_csv"] = gone  # a warning: the register has only the config's assets
    elif case == 6:
        d["influx"] = {"url": "http://127.0.0.1:1", "token_file": gone}
    elif case == 7:
        d["http"].update(listen=f"0.0.0.0:{free_port()}", token_file=gone)
    elif case == 8:
        d["devices"].append({"id": "cnc-pw", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:1",
                             "username": "op", "password_file": gone, "tags": [{"name": "x", "node": "ns=2;s=X"}]})
    else:
        m["password_file"] = str(tmp)  # a folder
    return d


def bad_port(rng: random.Random, d: Data, tmp: Path) -> Data:
    port = rng.choice(["0", "65536", "99999", "-1", "abc", "1e3", ""])
    where = rng.randrange(3)
    if where == 0:
        d["mqtt"]["url"] = f"mqtt://127.0.0.1:{port}"
    elif where == 1:
        d["http"]["listen"] = rng.choice([f"127.0.0.1:{port}", "localhost", ":8321", f"[::1]:{port}"])
    else:
        dev = rng.choice(d["devices"])
        dev["endpoint"] = re.sub(r":\d+", f":{port}", dev["endpoint"], count=1)
    return d


def deep_nesting(rng: random.Random, d: Data, tmp: Path) -> bytes:
    depth = rng.choice([50, 990, 5000])
    if rng.random() < 0.5:  # sim values are Any: the collector must carry them without choking
        dev = next(dev for dev in d["devices"] if dev.get("tags"))
        dev["tags"][0]["sim"] = {"kind": "choice", "values": "NESTED"}
    else:
        d["extra"] = "NESTED"
    return dump(d).replace(b"NESTED", b"[" * depth + b"1" + b"]" * depth, 1)


def alias_bomb(rng: random.Random, d: Data, tmp: Path) -> bytes:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, 10):
        lines.append(f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]")
    where = rng.choice(["templates_defaults", "top"])
    text = dump(d).decode()
    bomb = "\n".join(lines) + "\n"
    if where == "top":
        return (text + bomb).encode()
    return (bomb.replace("a", "x") + text).encode()  # unknown top-level keys that alias each other


def remove_key(rng: random.Random, d: Data, tmp: Path) -> Data:
    path = rng.choice([p for p in mappings(d) if get(d, p)])
    del get(d, path)[rng.choice(list(get(d, path)))]
    return d


def unknown_key(rng: random.Random, d: Data, tmp: Path) -> Data:
    path = rng.choice(mappings(d))
    target = get(d, path)
    key = rng.choice(list(target)) if target else "x"
    target[key[:-1] + key[-1] * 2 if len(key) > 1 else key + "x"] = 1
    return d


def long_string(rng: random.Random, d: Data, tmp: Path) -> Data:
    put(d, pick(rng, d, lambda v: isinstance(v, str)),
        rng.choice(["x" * 100_000, "\u0000", "名称" * 500, "🙂", " ", "a\nb", "../../etc/passwd"]))
    return d


def structure(rng: random.Random, d: Data, tmp: Path) -> bytes:
    return rng.choice([b"", b"# only a comment\n", b"- a\n- b\n", b"just text\n", b"42\n", b"null\n", b"{}\n",
                       b"site: [1, 2]\n", b"devices: {a: 1}\nsite: {enterprise_id: x}\n", b"--- a\n--- b\n",
                       b"site: {enterprise_id: x}\ndevices: null\n", b"\t- tab\n", b"key: 'unterminated\n"])


def state_dir(rng: random.Random, d: Data, tmp: Path) -> Data:
    (tmp / "afile").write_text("x")
    d["state_dir"] = rng.choice([str(tmp / "afile"), str(tmp / "afile" / "sub"), "/sys/shopfloor-hostile",
                                 "", str(tmp / "new" / "deep" / "state")])
    return d


def list_swap(rng: random.Random, d: Data, tmp: Path) -> Data:
    dev = rng.choice(d["devices"])
    case = rng.randrange(5)
    if case == 0:
        d["devices"] = {"a": 1}
    elif case == 1:
        dev["tags"] = []
    elif case == 2:
        d["devices"] = None
    elif case == 3:
        dev["tags"] = [dev.get("tags", [{}])[0]] * 3 if dev.get("tags") else "none"  # the same tag three times
    else:
        d["devices"].append(copy.deepcopy(dev))  # a duplicate device id
    return d


def absurd(rng: random.Random, d: Data, tmp: Path) -> Data:
    dev = rng.choice(d["devices"])
    rng.choice([
        lambda: d["mqtt"].update(keepalive=100000), lambda: d.setdefault("outbox", {}).update(commit_interval=1e-9),
        lambda: dev.update(degrade_for=1e300), lambda: dev.update(interval=True),
        lambda: dev.update(interval=0.001), lambda: d.setdefault("indicators", {}).update(bucket=1e-6),
        lambda: d.setdefault("indicators", {}).update(publish_interval=1e-9), lambda: dev.update(timeout=1e300),
        lambda: d["mqtt"].update(max_inflight=0), lambda: d["mqtt"].update(qos=2),
        lambda: d["mqtt"].update(client_id="c" * 70000), lambda: d["mqtt"].update(client_id="gateway-7"),
        lambda: d["mqtt"].update(keepalive=65535),
    ])()
    return d


def template_swap(rng: random.Random, d: Data, tmp: Path) -> Data:
    """Templates are expanded before validation: wrong types there must still come out as field errors."""
    if not d.get("templates"):
        d["templates"] = {"t": {"protocol": "modbus", "tags": [{"name": "x", "register": 40001}]}}
        d["devices"][0] = {"id": "t1", "template": "t", "endpoint": "tcp://127.0.0.1:1"}
    name = rng.choice(list(d["templates"]))
    tpl = d["templates"][name]
    user = next((dev for dev in d["devices"] if dev.get("template") == name), d["devices"][0])
    rng.choice([
        lambda: tpl.update(defaults=rng.choice([[1], "x", 3, None])),
        lambda: tpl.update(tags=rng.choice([5, "tags", {"a": 1}, [3, {"name": [1]}], []])),
        lambda: user.update(template=rng.choice([["x"], 7, {"a": 1}, None, "nope"])),
        lambda: user.update(tags=rng.choice([7, "x", [None], [{"name": {"a": 1}}]])),
        lambda: d.update(templates=rng.choice([[1], "x", {name: 5}])),
        lambda: tpl.pop("protocol"),
    ])()
    return d


KINDS: list[tuple[str, Mutation]] = [(f.__name__, f) for f in (
    type_swap, huge_number, bad_number, five_thousand_digits, encoding, duplicate_key, topic, missing_file,
    bad_port, deep_nesting, alias_bomb, remove_key, unknown_key, long_string, structure, state_dir, list_swap,
    absurd, template_swap)]


def dump(d: Data) -> bytes:
    return yaml.safe_dump(d, allow_unicode=True, sort_keys=False).encode()


def generate(tmp: Path, broker_port: int) -> list[tuple[str, Path]]:
    out = []
    for n in range(CONFIGS):
        kind, fn = KINDS[n % len(KINDS)]
        rng = random.Random(SEED + n)
        folder = tmp / f"c{n:02d}"
        folder.mkdir()
        result = fn(rng, prepared(SOURCES[n % 2], folder, broker_port), folder)
        path = folder / "config.yaml"
        path.write_bytes(result if isinstance(result, bytes) else dump(result))
        out.append((kind, path))
    return out


def check(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["check", "-c", str(path)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


async def start_and_stop(path: Path, tmp: Path) -> str:
    """`collector run` until READY=1, then SIGTERM: '' when it started and stopped cleanly, else why not."""
    notify = FakeNotifySocket(str(tmp / f"notify-{path.parent.name}.sock"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_") and k != "WATCHDOG_PID"}
    env["NOTIFY_SOCKET"] = notify.address
    env["PYTHONFAULTHANDLER"] = "1"  # a crash (once: exit -11 after SIGTERM) leaves its Python stack in run.log
    log = path.parent / "run.log"
    with log.open("w") as log_file:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "collector.cli", "run", "-c", str(path),
                                                    "--log-level", "WARNING", env=env, stderr=log_file,
                                                    stdout=log_file, cwd=path.parent)
        try:
            for _ in range(600):
                if any(m.startswith("READY=1") for m in notify.texts()) or proc.returncode is not None:
                    break
                await asyncio.sleep(0.1)
            if any(m.startswith("READY=1") for m in notify.texts()):
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), 30)
                why = "" if code == 0 else f"exit {code} after SIGTERM"
            else:
                why = f"no READY=1 (exit {proc.returncode})"
            if why:
                why += f": {log.read_text(errors='replace')[-3000:]}"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            notify.close()
    text = log.read_text(errors="replace")
    # An uncaught exception prints its traceback from the start of a line; logged ones (asyncua logs one when a
    # session that never opened is closed) sit inside a log line as exc="...".
    if re.search(r"^Traceback", text, re.MULTILINE) or "event=periodic_failed" in text:
        why += f" traceback: {text[-2000:]}"
    return why


async def test_hostile_configs_never_trace_back_and_what_check_accepts_runs(
        tmp_path: Path, broker: MosquittoProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("COLLECTOR_")]:
        monkeypatch.delenv(name)
    configs = generate(tmp_path, broker.port)
    assert len(configs) >= 50
    accepted: list[tuple[str, Path]] = []
    refused_kinds: set[str] = set()
    for kind, path in configs:
        code, out, err = check(path)
        assert "Traceback" not in err + out, (kind, path, err)
        assert code in (0, 2), (kind, path, code, err)
        if code == 2:
            refused_kinds.add(kind)
            problems = [ln for ln in err.splitlines() if ln.startswith("  ") and not ln.startswith("  ... and")]
            assert problems, (kind, path, err)
            unnamed = [ln for ln in problems if not NAMED.match(ln)]
            assert not unnamed, (kind, path, unnamed)
        else:
            assert ": OK:" in out, (kind, path, out, err)
            accepted.append((kind, path))
    kinds = {k for k, _ in accepted}
    assert len(refused_kinds) >= 12, refused_kinds  # the mutations really were hostile...
    assert len(kinds) >= 4, kinds  # ...and some still valid, so `run` is put to the test
    first = {k: p for k, p in reversed(accepted)}
    sample = list(first.items())
    rest = [a for a in accepted if a not in sample]
    sample += random.Random(SEED).sample(rest, min(len(rest), max(0, RUNS - len(sample))))
    failures: list[str] = []
    for i in range(0, len(sample), PARALLEL_RUNS):
        batch = sample[i:i + PARALLEL_RUNS]
        results = await asyncio.gather(*(start_and_stop(p, tmp_path) for _, p in batch))
        failures += [f"{kind} {path}: {why}" for (kind, path), why in zip(batch, results, strict=True) if why]
    assert not failures, "\n\n".join(failures)  # in full: a crash's stack is in the log tail
