"""HTTP/1.1 (RFC 9112), pure: message heads and their framing (``heads``), the chunked
coding (``chunked``), and the connection state machines the L7 I/O layer drives
(``connection``). Bytes in, events and bytes out; no sockets and no clock."""

# ruff: noqa: E402
from ...native import use

# The machines compiled by mypyc (``appliance.native``) when built from these sources:
# about 7% of a proxied request's CPU, measured A/B. Before the imports below.
NATIVE = use(__path__, __file__, "datapath/http1")

from ..errors import BackendError, ClientError, HttpError
from .chunked import LAST_CHUNK, ChunkedDecoder, chunk
from .connection import (
    CONTINUE,
    END_OF_MESSAGE,
    MAX_RESPONSE_HEAD,
    NEED_DATA,
    PAUSED,
    BackendConnection,
    Event,
    Marker,
    Phase,
    ServerConnection,
)
from .heads import (
    CHUNKED,
    HOP_BY_HOP,
    LENGTH,
    NO_BODY,
    REASONS,
    UNTIL_CLOSE,
    Framing,
    Request,
    Response,
    downstream_head,
    error_response,
    http_date,
    normalize_host,
    parse_request,
    parse_response,
    request_line_end,
    upstream_fields,
    upstream_head,
)

__all__ = [
    "CHUNKED", "CONTINUE", "END_OF_MESSAGE", "HOP_BY_HOP", "LAST_CHUNK", "LENGTH",
    "MAX_RESPONSE_HEAD", "NEED_DATA", "NO_BODY", "PAUSED", "REASONS", "UNTIL_CLOSE",
    "BackendConnection", "BackendError", "ChunkedDecoder", "ClientError", "Event", "Framing",
    "HttpError", "Marker", "Phase", "Request", "Response", "ServerConnection", "chunk",
    "downstream_head", "error_response", "http_date", "normalize_host", "parse_request",
    "parse_response", "request_line_end", "upstream_fields", "upstream_head",
]
