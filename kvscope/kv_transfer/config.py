"""`--kv-transfer-config`: which connector an engine uses and which side it plays.

    {"kv_connector": "SharedStorageConnector" | "ZmqConnector",
     "kv_role": "kv_producer" | "kv_consumer" | "kv_both",
     "kv_connector_extra_config": {...}}

A producer (the prefill server) keeps a finished request's K/V for a consumer (the
decode server) to take; `kv_both` does either, per request. The extra options:
SharedStorageConnector's "shared_storage_path" (default /dev/shm/kvscope-kv),
ZmqConnector's "kv_host" / "kv_port" (where the producer serves K/V; the port 0 picks
a free one), and for both "load_timeout_s" (how long a consumer waits for K/V before
computing the prompt itself) and "hold_timeout_s" (how long a producer keeps K/V
nobody took)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvscope.config import ConfigError

CONNECTORS = ("SharedStorageConnector", "ZmqConnector")
ROLES = ("kv_producer", "kv_consumer", "kv_both")
EXTRA_KEYS = {"shared_storage_path", "kv_host", "kv_port", "load_timeout_s", "hold_timeout_s"}


@dataclass(frozen=True, slots=True)
class KVTransferConfig:
    kv_connector: str
    kv_role: str
    kv_connector_extra_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, options: Any) -> KVTransferConfig:
        if isinstance(options, KVTransferConfig):
            return options
        if not isinstance(options, dict):
            raise ConfigError(f"kv_transfer_config must be an object; got {options!r}")
        unknown = set(options) - {"kv_connector", "kv_role", "kv_connector_extra_config"}
        if unknown:
            raise ConfigError(f"kv_transfer_config: unknown field(s) {sorted(unknown)}")
        config = cls(options.get("kv_connector", ""), options.get("kv_role", ""),
                     dict(options.get("kv_connector_extra_config") or {}))
        config.validate()
        return config

    def validate(self) -> None:
        if self.kv_connector not in CONNECTORS:
            raise ConfigError(f"kv_transfer_config.kv_connector must be one of "
                              f"{', '.join(CONNECTORS)}; got {self.kv_connector!r}")
        if self.kv_role not in ROLES:
            raise ConfigError(f"kv_transfer_config.kv_role must be one of {', '.join(ROLES)}; "
                              f"got {self.kv_role!r}")
        extra = self.kv_connector_extra_config
        unknown = set(extra) - EXTRA_KEYS
        if unknown:
            raise ConfigError(f"kv_transfer_config.kv_connector_extra_config: unknown "
                              f"key(s) {sorted(unknown)}; known: {sorted(EXTRA_KEYS)}")
        for key in ("load_timeout_s", "hold_timeout_s"):
            value = extra.get(key, 1.0)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"kv_transfer_config: {key} must be a positive number; "
                                  f"got {value!r}")
        port = extra.get("kv_port", 0)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
            raise ConfigError(f"kv_transfer_config: kv_port must be a TCP port; got {port!r}")

    @property
    def is_producer(self) -> bool:
        return self.kv_role in ("kv_producer", "kv_both")

    @property
    def is_consumer(self) -> bool:
        return self.kv_role in ("kv_consumer", "kv_both")

    def option(self, key: str, default: Any) -> Any:
        return self.kv_connector_extra_config.get(key, default)
