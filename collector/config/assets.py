"""Entries of `assets:`: equipment on the register (设备台账), optionally bound to a configured device. The
fields themselves (`AssetFields`) are in the base: every device carries them as `asset:`."""

from __future__ import annotations

from pydantic import Field

from collector.config.base import AssetFields, AssetStatus, DigitalBasis, Usage

__all__ = ["AssetEntry", "AssetFields", "AssetStatus", "DigitalBasis", "Usage"]


class AssetEntry(AssetFields):
    """An entry of `assets:`: equipment on the register, optionally bound to a configured device."""

    id: str = Field(min_length=1)
    device: str | None = None


