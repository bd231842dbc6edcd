"""Disaggregated prefill/decode: KV connectors that move a request's K/V between engines."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvscope.events import Emitter
    from kvscope.kv_transfer.base import KVConnector
    from kvscope.kv_transfer.config import KVTransferConfig


def make_connector(config: KVTransferConfig, engine_id: str, events: Emitter) -> KVConnector:
    if config.kv_connector == "ZmqConnector":
        from kvscope.kv_transfer.zmq_connector import ZmqConnector

        return ZmqConnector(config, engine_id, events)
    from kvscope.kv_transfer.shared_storage import SharedStorageConnector

    return SharedStorageConnector(config, engine_id, events)
