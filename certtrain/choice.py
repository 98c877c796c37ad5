"""Closed sets of string values for the typed configs."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A closed set of string values: a bad value fails while Hydra composes the config, naming
    the choices. Members are their strings (==, hashing, formatting), so code reads them as str."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


def choice(name: str, values) -> type[Choice]:
    """Choice("Name", values) with each value its own member name."""
    return Choice(name, {value: value for value in values})
