"""Write requests from every door (MQTT, HTTP, `collector write`) through one path: check, write, record.

Order of the guard rails (the first that says no answers, and nothing is sent to the device): the request's
form, the device, the switches (global `writes.enabled`, then the device's), the tag and its `write.allowed`,
the value's type, its range or allowed list, the device's state (online only), another request writing the
same tag, the tag's rate limit. Then the adapter writes (sharing the line with polling) and reads back.
Every request, refused or not, leaves exactly one audit line and one result.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from adapters.base import Adapter, AdapterError, WriteError
from collector.config import CollectorConfig
from collector.model import DeviceState, Quality
from collector.sinks.mqtt import iso
from collector.writes.audit import AuditLog
from collector.writes.guards import RateLimiter, Refusal, range_problem, type_problem
from collector.writes.reasons import BEFORE_SENDING, FAILED, OK, REFUSED, reason_text

log = logging.getLogger(__name__)

Publish = Callable[[str, dict[str, Any]], None]
MAX_ID = 128


def token_id(token: str) -> str:
    """Who sent an HTTP write: a short fingerprint of the token (the token itself is never recorded)."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(slots=True)
class WriteRequest:
    device: str
    tag: str | None
    value: Any
    id: str
    by: str
    via: str
    problem: str | None = None  # why the request is malformed (answered `bad_request`)


def parse_request(device: str, body: Any, by: str, via: str) -> WriteRequest:
    """A request from a JSON body `{"id": ..., "tag": ..., "value": ...}` (bytes or already parsed)."""
    if isinstance(body, bytes | bytearray):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return WriteRequest(device, None, None, str(uuid.uuid4()), by, via, f"not JSON: {exc}")
    if not isinstance(body, dict):
        return WriteRequest(device, None, None, str(uuid.uuid4()), by, via, "the body must be a JSON object")
    rid = body.get("id")
    rid = str(rid)[:MAX_ID] if rid not in (None, "") else str(uuid.uuid4())
    tag = body.get("tag")
    problem = None
    if not isinstance(tag, str) or not tag:
        problem, tag = "give the tag's name in \"tag\"", None
    elif "value" not in body:
        problem = "give the value to write in \"value\""
    elif isinstance(body["value"], float) and not math.isfinite(body["value"]):
        problem = "the value must be finite"
    return WriteRequest(device, tag, body.get("value"), rid, by, via, problem)


class WriteService:
    """Executes write requests against the running devices and keeps the audit log."""

    def __init__(self, config: Callable[[], CollectorConfig], adapter_of: Callable[[str], Adapter | None],
                 state_of: Callable[[str], DeviceState | None], audit: AuditLog, publish: Publish | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.adapter_of = adapter_of
        self.state_of = state_of
        self.audit = audit
        self.publish = publish
        self.rates = RateLimiter(clock)
        self.busy: set[tuple[str, str]] = set()
        self.counts = {OK: 0, REFUSED: 0, FAILED: 0}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- doors

    @property
    def root(self) -> str:
        return self.config().topic_root.rstrip("/")

    @property
    def request_filter(self) -> str:
        return f"{self.root}/devices/+/write"

    def on_mqtt(self, topic: str, payload: bytes) -> None:
        """The MQTT sink's message hook: `{root}/devices/{id}/write` -> a task; the result is published on
        `.../write/result`. MQTT 3.1.1 does not tell a receiver who published: `client_id` in the payload
        names the sender for the audit (the broker's ACL decides who may publish there)."""
        prefix = f"{self.root}/devices/"
        if not (topic.startswith(prefix) and topic.endswith("/write")):
            return
        device = topic[len(prefix):-len("/write")]
        if not device or "/" in device:
            return
        client = None
        try:
            parsed = orjson.loads(payload)
            client = parsed.get("client_id") if isinstance(parsed, dict) else None
        except orjson.JSONDecodeError:
            parsed = payload
        by = f"mqtt:{str(client)[:MAX_ID]}" if client else "mqtt:unnamed"
        task = asyncio.get_running_loop().create_task(self.handle(parse_request(device, parsed, by, "mqtt")))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_command(self, device: str, tag: str, value: Any) -> None:
        """A Sparkplug DCMD metric (collector/sinks/sparkplug.py): the same path; the result is in the audit
        topic and the next DDATA (Sparkplug has no reply to a command)."""
        req = WriteRequest(device, tag, value, str(uuid.uuid4()), "sparkplug:DCMD", "sparkplug")
        task = asyncio.get_running_loop().create_task(self.handle(req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the one path

    async def handle(self, req: WriteRequest) -> dict[str, Any]:
        """Check, write, record; the result (also published and logged) as a dict."""
        started = time.time()
        refusal, rule_confirm = self._check(req)
        if refusal is not None:
            result = self._result(req, started, REFUSED, refusal)
        else:
            assert req.tag is not None
            key = (req.device, req.tag)
            self.busy.add(key)
            try:
                result = await self._execute(req, started, rule_confirm == "readback")
            finally:
                self.busy.discard(key)
        self.counts[result["status"]] += 1
        try:
            self.audit.append(result)
        except OSError as exc:  # the answer still goes out; the log says the record is missing
            log.error("event=write_audit_failed device=%s tag=%s error=%s", req.device, req.tag, exc)
        log.info("event=write device=%s tag=%s status=%s code=%s by=%s", req.device, req.tag, result["status"],
                 result["code"], req.by)
        if self.publish is not None:
            try:
                cfg = self.config()
                self.publish(cfg.writes.audit_topic.replace("{root}", self.root), result)
                if req.via == "mqtt":
                    self.publish(f"{self.root}/devices/{req.device}/write/result", result)
            except Exception:
                log.exception("event=write_publish_failed device=%s", req.device)
        return result

    def _check(self, req: WriteRequest) -> tuple[Refusal | None, str]:
        """The guard rails that need no device; the tag's `confirm` setting when they pass."""
        if req.problem is not None:
            return ("bad_request", req.problem), ""
        cfg = self.config()
        device = next((d for d in cfg.devices if d.id == req.device), None)
        if device is None:
            return ("unknown_device", f"no device '{req.device}' in the config"), ""
        if not cfg.writes.enabled:
            return ("writes_disabled", "writes.enabled is false for this collector (the default)"), ""
        if not device.writes.enabled:
            return ("writes_disabled", f"devices[{req.device}].writes.enabled is false (the default)"), ""
        tag = next((t for t in device.tags if t.name == req.tag), None)
        if tag is None:
            return ("unknown_tag", f"no tag '{req.tag}' on device {req.device}"), ""
        rule = tag.write
        if not rule.writable:
            return ("not_writable", f"tag {req.tag} has no write.allowed"), ""
        problem = type_problem(tag.write_type, req.value) or range_problem(rule, req.value)
        if problem is not None:
            return problem, ""
        state = self.state_of(req.device)
        if state == DeviceState.DEGRADED:
            return ("device_degraded", "the device is skipped on its line for now"), ""
        if state != DeviceState.ONLINE:
            return ("device_offline", f"state {state.value if state else 'unknown'}"), ""
        assert req.tag is not None
        key = (req.device, req.tag)
        if key in self.busy:
            return ("busy", "wait for that request's result, then send again"), ""
        limited = self.rates.check(key, rule.rate_limit)
        if limited is not None:
            return limited, ""
        return None, rule.confirm

    async def _execute(self, req: WriteRequest, started: float, readback: bool) -> dict[str, Any]:
        assert req.tag is not None
        adapter = self.adapter_of(req.device)
        if adapter is None:
            return self._result(req, started, REFUSED, ("device_offline", "no session to the device"))
        if not adapter.supports_write:
            return self._result(req, started, REFUSED, ("not_supported", f"{adapter.protocol} adapter"))
        try:
            async with asyncio.timeout(self.config().writes.timeout):
                outcome = await adapter.write(req.tag, req.value, readback=readback)
        except WriteError as exc:
            status = REFUSED if exc.code in BEFORE_SENDING else FAILED
            return self._result(req, started, status, (exc.code, exc.detail))
        except AdapterError as exc:
            return self._result(req, started, FAILED, ("device_offline", exc.reason))
        except TimeoutError:
            return self._result(req, started, FAILED, ("timeout", f"no result within "
                                                       f"{self.config().writes.timeout:g} s"))
        extra = {"old": outcome.old, "readback": outcome.readback, "readback_quality": outcome.readback_quality}
        if readback and not _same(outcome.readback, req.value, outcome.readback_quality):
            return self._result(req, started, FAILED, ("readback_mismatch", f"wrote {req.value!r}, the device "
                                f"holds {outcome.readback!r}"), extra)
        return self._result(req, started, OK, None, extra)

    def _result(self, req: WriteRequest, started: float, status: str, refusal: Refusal | None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        code, detail = refusal if refusal is not None else (None, None)
        now = time.time()
        return {"id": req.id, "ts": iso(now), "device": req.device, "tag": req.tag, "value": req.value,
                "status": status, "code": code, "reason": reason_text(code, detail) if code else None,
                "old": None, "readback": None, "readback_quality": None, **(extra or {}),
                "by": req.by, "via": req.via, "duration_ms": round((now - started) * 1000, 1)}

    async def stop(self) -> None:
        """Let running requests end (each is bounded by `writes.timeout`)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.config().writes.timeout)


def _same(readback: Any, wanted: Any, quality: str | None) -> bool:
    """The device holds what was written: equal, or for numbers equal to float32 precision (scaled registers
    and Float nodes do not hold every decimal exactly)."""
    if quality not in (None, Quality.GOOD, Quality.BAD_OUT_OF_RANGE):
        return False
    if isinstance(readback, bool) or isinstance(wanted, bool):
        return bool(readback) == bool(wanted) and isinstance(readback, bool | int) and isinstance(wanted, bool | int)
    if isinstance(readback, int | float) and isinstance(wanted, int | float):
        return math.isclose(readback, wanted, rel_tol=1e-6, abs_tol=1e-9)
    return bool(readback == wanted)

