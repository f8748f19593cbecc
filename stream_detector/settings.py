"""Declaring a setting once: its default, its bounds or choices, and its help, on the dataclass field.

The daemon's TOML reader (daemon/config.py), its reference table (docs/daemon.md) and the commented
example (configs/daemon.toml, checked by a test) all come from these declarations, so a default or a
bound is written in exactly one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

METADATA_KEY = "setting"


@dataclasses.dataclass(frozen=True)
class Setting:
    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] | None = None


def setting(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    choices: tuple[str, ...] | None = None,
    **field_options: Any,
) -> Any:
    """A dataclass field carrying its declaration (read back with ``declared_settings``)."""
    declaration = Setting(help, minimum, maximum, exclusive_minimum, choices)
    return dataclasses.field(default=default, metadata={METADATA_KEY: declaration}, **field_options)


def declared_settings(settings_type: type) -> list[tuple[dataclasses.Field, Setting]]:
    """The declared fields of a settings dataclass, in order (fields without a declaration are left out:
    they are derived or read by hand)."""
    return [
        (item, item.metadata[METADATA_KEY])
        for item in dataclasses.fields(settings_type)
        if METADATA_KEY in item.metadata
    ]
