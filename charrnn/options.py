"""The keyword options of a training run: their names (the CLI's flags with underscores), the unknown
-name check with a suggestion, and durations such as ``"10m"``."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import fields
from typing import Any

from charrnn.errors import ConfigError, option
from charrnn.trainer import TrainConfig

MODEL_OPTIONS = ("cell", "num_layers", "hidden_size", "embedding_size", "dropout")
ARCHITECTURE = ("cell", "num_layers", "hidden_size", "embedding_size")  # fixed once a model exists
TRAIN_OPTIONS = tuple(f.name for f in fields(TrainConfig))
# How the text is read and where the run executes; not part of the saved training options.
RUN_OPTIONS = ("encoding", "separator", "cache_dir", "no_cache", "device", "threads", "sample_length")
OPTIONS = MODEL_OPTIONS + TRAIN_OPTIONS + RUN_OPTIONS
RUN_DEFAULTS: dict[str, Any] = {
    "encoding": "utf-8",
    "separator": "\n",
    "cache_dir": None,
    "no_cache": False,
    "device": "auto",
    "threads": None,
    "sample_length": 300,
}

_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_duration(value: str | float | int, name: str | None = "max_time") -> float:
    """'90', '90s', '10m', '1.5h', '2d', '1h30m' or a number of seconds -> seconds; ConfigError otherwise,
    naming the option ``name`` (None: the value alone, for a caller that names it itself)."""
    what = f"{option(name)} {value!r}" if name else repr(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)", value)
        if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", value):
            raise ConfigError(f"{what} is not a duration; use e.g. 90s, 10m, 1.5h or 1h30m")
        seconds = 0.0
        for number, unit in parts:
            unit_key = unit.lower() or None
            if unit_key not in _UNIT_SECONDS:
                raise ConfigError(f"{what}: unknown unit {unit!r}; use s, m, h or d")
            seconds += float(number) * _UNIT_SECONDS[unit_key]
    else:
        raise ConfigError(f"{what} is not a duration; use e.g. '10m' or a number of seconds")
    if not seconds > 0:
        raise ConfigError(f"{what} must be longer than zero")
    if not math.isfinite(seconds):
        raise ConfigError(f"{what} is not a finite duration; use e.g. 90s, 10m, 1.5h or 1h30m")
    return seconds


def check_option_names(options: dict) -> None:
    """ConfigError for a keyword ``train`` does not know, naming the nearest one it does."""
    for name in options:
        if name not in OPTIONS:
            near = difflib.get_close_matches(name, OPTIONS, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid options: {', '.join(OPTIONS)}"
            raise ConfigError(f"unknown training option {name!r}{hint}")
