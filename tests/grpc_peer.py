"""A gRPC server and client for the HTTP/2 tests, with grpcio and no generated code:
methods of service ``t.T`` carry raw bytes. Unary echoes, Stream answers N messages for
the number N it gets, Bidi echoes each message as it comes, Slow waits before answering
(a deadline test), Fail ends with a status and message in trailers.

Run as a server: ``python -m tests.grpc_peer ADDRESS:PORT``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent import futures

import grpc


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield b"msg %d" % i


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for r in requests:
        yield b"got:" + r


def _slow(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(float(request))
    return b"late"


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no such thing: " + request.decode())
    return b""


def server(address: str) -> grpc.Server:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        "Slow": grpc.unary_unary_rpc_method_handler(_slow),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
    }
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    s.add_insecure_port(address)
    s.start()
    return s


class Client:
    """Calls to ``t.T`` through ``target`` (plain h2c), for the ``authority`` given (by
    default the target's)."""

    def __init__(self, target: str, authority: str | None = None) -> None:
        options = [("grpc.default_authority", authority)] if authority else []
        self.channel = grpc.insecure_channel(target, options=options)

    def unary(self, data: bytes, timeout: float = 5) -> bytes:
        call = self.channel.unary_unary("/t.T/Unary")
        return bytes(call(data, timeout=timeout))

    def stream(self, n: int, timeout: float = 5) -> list[bytes]:
        call = self.channel.unary_stream("/t.T/Stream")
        return [bytes(m) for m in call(b"%d" % n, timeout=timeout)]

    def bidi(self, messages: list[bytes], timeout: float = 5) -> list[bytes]:
        call = self.channel.stream_stream("/t.T/Bidi")
        return [bytes(m) for m in call(iter(messages), timeout=timeout)]

    def slow(self, seconds: float, timeout: float) -> bytes:
        call = self.channel.unary_unary("/t.T/Slow")
        return bytes(call(b"%g" % seconds, timeout=timeout))

    def fail(self, what: bytes) -> bytes:
        call = self.channel.unary_unary("/t.T/Fail")
        return bytes(call(what, timeout=5))

    def close(self) -> None:
        self.channel.close()


if __name__ == "__main__":
    server(sys.argv[1]).wait_for_termination()
