"""The U-Net's settings, without torch: a model bundle's manifest records them, and the
commands that only read a manifest (``dicomnode status``, ``dicomnode models list``) never
load the network."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NormKind = Literal["batch", "instance", "group", "none"]
UpsampleKind = Literal["trilinear", "nearest"]


class UNetConfig(BaseModel):
    """Serialisable U-Net settings (``model_dump()`` -> dict, ``UNetConfig(**d)`` back)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(3, ge=1)
    widths: tuple[int, ...] = (16, 32, 64, 128)
    norm: NormKind = "batch"
    upsample: UpsampleKind = "trilinear"

    @field_validator("widths")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(w < 1 for w in v):
            raise ValueError("widths must be a non-empty tuple of positive ints")
        return v

    @property
    def levels(self) -> int:
        return len(self.widths)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (widths as a list)."""
        return self.model_dump(mode="json")
