"""OPC UA config models: the device (session, security, subscription options) and its tags.

Built on the core's config base (collector/config/base.py); this module is what `protocol: opcua` in the YAML
validates against (README.md beside it lists every option).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from adapters.opcua import SCHEMES
from collector.config.base import SUBPATH, DeviceBase, EndpointRule, Integer, Number, Strict, TagBase
from collector.config.secrets import folder_errors, secret_file_problems

ENDPOINT_RULE = EndpointRule(
    schemes=SCHEMES,
    forms="opc.tcp://host:port[/path] (e.g. opc.tcp://192.168.1.20:4840)",
    what="an OPC UA endpoint",
    ports={"opc.tcp": 4840},
)


class OpcUaTag(TagBase):
    """An OPC UA tag: `node` is a node id (`ns=2;s=X`, `nsu=urn:...;s=X`, `i=2258`) or a browse path
    (`/Objects/3:Machines/3:Spindle/3:Speed`)."""

    node: str = Field(min_length=1)
    type: Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float", "double",
                  "string", "datetime"] | None = None
    deadband: Number | None = Field(default=None, ge=0)

    @field_validator("node")
    @classmethod
    def _node_form(cls, v: str) -> str:
        if v.startswith("/"):
            return v
        if not re.match(r"^(ns=\d+;|nsu=[^;]+;)?(i=\d+|s=.+|g=[0-9a-fA-F\-]{36}|b=.+)$", v):
            raise ValueError(f"'{v}' is not a node id (ns=2;s=Name, nsu=urn:x;s=Name, i=2258) or a browse path "
                             "(/Objects/2:Machine/2:Speed)")
        return v



class OpcUaSecurity(Strict):
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] = "None"
    pki_dir: Path | None = Field(default=None, description="own/, trusted/, rejected/; default <state_dir>/pki")
    application_uri: str = "urn:shopfloor-collector:client"

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSecurity:
        if (self.mode == "None") != (self.policy == "None"):
            raise ValueError("security mode None goes with policy None; Sign/SignAndEncrypt need a policy "
                             "(Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss)")
        return self


class OpcUaDevice(DeviceBase):
    protocol: Literal["opcua"] = "opcua"
    mode: Literal["poll", "subscribe"] = "subscribe"
    timeout: Number = Field(default=4.0, gt=0, le=600)
    sampling_interval: Number | None = Field(default=None, ge=0, le=86_400_000, description="ms; default: interval")
    queue_size: Integer = Field(default=10, ge=1, le=100_000)
    deadband_type: Literal["none", "absolute", "percent"] = "none"
    max_nodes_per_read: Integer = Field(default=1000, ge=1, le=100_000)
    security: OpcUaSecurity = Field(default_factory=OpcUaSecurity)
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    namespace_uri: str = "urn:shopfloor-collector:sim"
    tags: list[OpcUaTag] = Field(min_length=1)


    endpoint_rule: ClassVar[EndpointRule] = ENDPOINT_RULE

    @model_validator(mode="after")
    def _percent_bands(self) -> OpcUaDevice:
        """A percent deadband is 0..100 (Part 8 6.2): a server refuses more (BadDeadbandFilterInvalid)."""
        if self.deadband_type != "percent":
            return self
        problems = [f"{SUBPATH}tags[{j}].deadband: tag '{tag.name}': {tag.deadband:g} is over 100; with "
                    "deadband_type percent the band is a percentage of the node's EURange (0..100)"
                    for j, tag in enumerate(self.tags) if tag.deadband is not None and tag.deadband > 100]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def start_problems(self, where: str, seen: set[Any]) -> tuple[list[str], list[str]]:
        """The login's password and, for a secured session, the PKI folder (checked once per folder)."""
        errors, warnings = self._login_problems(where)
        pki = self.security.pki_dir
        if self.security.mode != "None" and pki is not None and pki not in seen:
            seen.add(pki)
            errors = errors + folder_errors(pki, f"{where}.security.pki_dir", "it holds the client certificate")
        return errors, warnings

    def _login_problems(self, where: str) -> tuple[list[str], list[str]]:
        if self.username is None:
            fields = [f for f in ("password_env", "password_file") if getattr(self, f) is not None]
            return [], [f"{where}.{f}: ignored without {where}.username (anonymous login)" for f in fields]
        if self.password_env and os.environ.get(self.password_env):
            return [], []
        if self.password_file is not None:
            return secret_file_problems(self.password_file, f"{where}.password_file")
        if self.password_env:
            return [], [f"{where}.password_env: {self.password_env} is not set here; set it where the service "
                        "runs (e.g. /etc/shopfloor-collector/collector.env), or the login fails"]
        return [f"{where}.username: user '{self.username}' needs a password: set password_env or password_file"], []

    def use_state_dir(self, state_dir: Path) -> None:
        """Without `security.pki_dir` the PKI folder is `<state dir>/pki` (docs/opcua.md)."""
        if self.security.pki_dir is None:
            self.security.pki_dir = state_dir / "pki"

    @classmethod
    def across_devices(cls, devices: Sequence[tuple[int, Any]]) -> list[str]:
        """One PKI folder holds one client certificate, made for one ApplicationUri: two secured devices that
        share a folder but name different URIs can never both connect (the second finds the first's certificate)."""
        lines: list[str] = []
        first: dict[Path, tuple[int, str]] = {}
        for i, dev in devices:
            if dev.security.mode == "None" or dev.security.pki_dir is None:
                continue
            folder = Path(os.path.abspath(dev.security.pki_dir))
            j, uri = first.setdefault(folder, (i, dev.security.application_uri))
            if uri != dev.security.application_uri:
                lines.append(f"devices[{i}].security.application_uri: '{dev.security.application_uri}' differs "
                             f"from '{uri}' of devices[{j}], and both use the PKI folder {dev.security.pki_dir} (one "
                             "certificate each folder): use the same application_uri or give this device its own "
                             "security.pki_dir")
        return lines
