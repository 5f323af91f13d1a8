"""MesaTEE settings: the `[mesatee]` section of teebus.toml."""

from __future__ import annotations

from dataclasses import dataclass

from components.mesatee.kms_cache import DEFAULT_MAX_ENTRIES


@dataclass(frozen=True)
class MesateeConfig:
    kms_opened_configs: int = DEFAULT_MAX_ENTRIES   # opened key configs the KMS keeps for repeated Gets

    def __post_init__(self) -> None:
        if self.kms_opened_configs < 1:
            raise ValueError(f"kms_opened_configs must be at least 1, not {self.kms_opened_configs}")
