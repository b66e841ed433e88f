"""Service configuration: `config.yml` files with `${VAR:default}` interpolation.

The interpolation is nameko's own (the one `nameko run --config` applies), so a file
means the same thing to the runner, to tests and to command-line tools.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from nameko.cli.main import setup_yaml_parser

_parser_ready = False


def load_config(path: str | os.PathLike[str], **overrides: Any) -> dict[str, Any]:
    """Read a service's config.yml, resolving `${VAR:default}` from the environment."""
    global _parser_ready
    if not _parser_ready:
        setup_yaml_parser()
        _parser_ready = True
    with Path(path).open(encoding="utf-8") as fh:
        config = yaml.safe_load(fh) or {}
    config.update(overrides)
    return config


def service_config_path(service: str) -> Path:
    """Where a service's config.yml lives in the source tree."""
    return Path(__file__).resolve().parent.parent / service / "config.yml"
