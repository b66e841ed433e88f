"""Service configuration: the kit's `base.yml` with a service's `config.yml` read over it.

Both use nameko's own `${VAR:default}` interpolation, so a file means the same thing to
the runner (`services/common/run.py`), to tests and to command-line tools.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from nameko.cli.main import setup_yaml_parser

BASE_CONFIG = Path(__file__).resolve().with_name("base.yml")
_parser_ready = False


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One YAML file, resolving `${VAR:default}` from the environment."""
    global _parser_ready
    if not _parser_ready:
        setup_yaml_parser()
        _parser_ready = True
    with Path(path).open(encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; nested mappings (LOGGING's loggers, say) merge key by key."""
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def load_config(path: str | os.PathLike[str], **overrides: Any) -> dict[str, Any]:
    """A service's config: base.yml, then its config.yml, then `overrides`."""
    return {**merged(read_config(BASE_CONFIG), read_config(path)), **overrides}


def service_config_path(service: str) -> Path:
    """Where a service's config.yml lives in the source tree."""
    return Path(__file__).resolve().parent.parent / service / "config.yml"
