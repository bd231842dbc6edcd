"""K/V over TCP with pyzmq, across machines: the producer serves each finished
prefill's rows by request id (a ROUTER socket, in a thread of the producer's engine
process); the consumer asks for the rows it needs and writes them into blocks it has
just allocated. The producer holds the request's blocks until its rows are taken (or
hold_timeout_s passes) and frees them on its next step.

A request is one JSON frame {"request_id", "start", "stop"}; the answer is a JSON
header {"ok", "shape", "dtype"} and, when ok, the rows' raw bytes.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any

import torch
import zmq

from kvscope.kv_transfer.base import KVConnector, LoadFailed
from kvscope.request import Request

logger = logging.getLogger(__name__)

POLL_MS = 100
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ZmqConnector(KVConnector):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.context = zmq.Context()
        self._stopping = threading.Event()
        self._server: threading.Thread | None = None
        self.host = str(self.config.option("kv_host", "127.0.0.1"))
        self.port = int(self.config.option("kv_port", 0))
        if self.config.is_producer:
            self._start_server()

    # -- the producer ---------------------------------------------------------------

    def _start_server(self) -> None:
        router = self.context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        bind_host = "*" if self.host in ("0.0.0.0", "") else self.host
        if self.port:
            router.bind(f"tcp://{bind_host}:{self.port}")
        else:
            self.port = router.bind_to_random_port(f"tcp://{bind_host}")
        if self.host in ("0.0.0.0", ""):
            self.host = socket.gethostname()
        self._server = threading.Thread(target=self._serve, args=(router,),
                                        name="kvscope-kv-server", daemon=True)
        self._server.start()
        logger.info("K/V producer serving on tcp://%s:%d", self.host, self.port)

    def _serve(self, router: zmq.Socket) -> None:
        try:
            while not self._stopping.is_set():
                if not router.poll(POLL_MS):
                    continue
                identity, *frames = router.recv_multipart()
                router.send_multipart([identity, b"", *self._answer(frames[-1])], copy=True)
        finally:
            router.close(0)

    def _answer(self, frame: bytes) -> list[bytes]:
        try:
            ask = json.loads(frame)
            rows = self.take_held(str(ask["request_id"]), int(ask["start"]), int(ask["stop"]))
        except (ValueError, KeyError, TypeError) as exc:
            return [json.dumps({"ok": False, "error": f"bad request: {exc}"}).encode()]
        if rows is None:
            return [json.dumps({"ok": False, "error": "no K/V held for that request "
                                "(taken already, or held past its timeout)"}).encode()]
        header = {"ok": True, "shape": list(rows.shape),
                  "dtype": str(rows.dtype).removeprefix("torch.")}
        data = rows.view(torch.uint8).numpy().tobytes() if rows.dtype == torch.bfloat16 \
            else rows.numpy().tobytes()
        return [json.dumps(header).encode(), data]

    def save_kv(self, request: Request, block_ids: list[int], num_tokens: int
                ) -> tuple[bool, dict[str, Any]]:
        self.hold(request, block_ids, num_tokens)
        return True, {"remote_host": self.host, "remote_port": self.port}

    # -- the consumer ---------------------------------------------------------------

    def fetch(self, params: dict[str, Any], start: int, stop: int) -> torch.Tensor:
        try:
            address = f"tcp://{params['remote_host']}:{int(params['remote_port'])}"
            ask = {"request_id": params["remote_request_id"], "start": start, "stop": stop}
        except (KeyError, TypeError, ValueError) as exc:
            raise LoadFailed(f"kv_transfer_params lack the producer's address ({exc})") \
                from exc
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            dealer.connect(address)
            dealer.send_multipart([b"", json.dumps(ask).encode()])
            if not dealer.poll(int(self.load_timeout_s * 1000)):
                raise LoadFailed(f"no answer from {address} in {self.load_timeout_s:.0f} s")
            _, header_frame, *data = dealer.recv_multipart()
        finally:
            dealer.close(0)
        header = json.loads(header_frame)
        if not header.get("ok"):
            raise LoadFailed(f"the producer said: {header.get('error')}")
        dtype = DTYPES[header["dtype"]]
        raw = torch.frombuffer(bytearray(data[0]), dtype=torch.uint8)
        return raw.view(dtype).view(header["shape"])

    def shutdown(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.join(2 * POLL_MS / 1000 + 1)
        self.context.term()
