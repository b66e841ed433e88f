"""A nameko timer whose interval comes from the service's config, not the source."""
from __future__ import annotations

from typing import Any

from nameko.timer import Timer


class ConfiguredTimer(Timer):
    def __init__(self, config_key: str, default: float, **kwargs: Any) -> None:
        super().__init__(interval=default, **kwargs)
        self.config_key = config_key

    def setup(self) -> None:
        self.interval = float(self.container.config.get(self.config_key, self.interval))
        super().setup()


every = ConfiguredTimer.decorator
