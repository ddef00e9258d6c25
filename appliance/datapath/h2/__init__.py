"""HTTP/2 (RFC 9113) over the ``h2`` machine: to clients (``session``), to backends
(``upstream``), the messages between them and HTTP/1.1 (``messages``, pure) and the
bounds on what a client may do (``guard``, pure)."""

from .messages import PREFACE

__all__ = ["PREFACE"]
