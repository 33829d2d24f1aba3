"""Why a write was refused or failed: a machine-readable code with Chinese first and English beside.

`refused` means the guard rails stopped the request before anything was sent to the device (nothing was
written); `failed` means the request reached the device and did not end as asked.
"""

from __future__ import annotations

OK = "ok"
REFUSED = "refused"
FAILED = "failed"

TEXTS: dict[str, tuple[str, str]] = {
    "bad_request": ("请求格式错误", "bad request"),
    "unknown_device": ("没有该设备", "no such device"),
    "unknown_tag": ("没有该点位", "no such tag"),
    "writes_disabled": ("写入功能未启用", "writes are disabled"),
    "not_writable": ("该点位不允许写入", "tag not writable"),
    "type_mismatch": ("数值类型不符", "type mismatch"),
    "out_of_range": ("数值超出允许范围", "value out of range"),
    "busy": ("该点位正在被另一个请求写入", "another request is writing this tag"),
    "rate_limited": ("写入过于频繁，已达限速", "rate limit hit"),
    "device_offline": ("设备离线", "device offline"),
    "device_degraded": ("设备状态降级，暂停写入", "device degraded"),
    "not_supported": ("该协议暂不支持写入", "this protocol does not write (yet)"),
    "device_refused": ("设备拒绝写入", "the device refused the write"),
    "no_answer": ("设备未应答，写入结果未知", "no answer from the device: the write may or may not be applied"),
    "timeout": ("写入超时", "the write timed out"),
    "readback_mismatch": ("回读值与写入值不符", "the value read back differs from the value written"),
}

# codes of adapter WriteErrors raised before anything was written: the request counts as refused
BEFORE_SENDING = frozenset({"unknown_tag", "not_writable", "type_mismatch"})


def reason_text(code: str, detail: str | None = None) -> str:
    """`中文 (English): detail` for the result and the audit line."""
    zh, en = TEXTS.get(code, (code, code))
    return f"{zh} ({en})" + (f": {detail}" if detail else "")
