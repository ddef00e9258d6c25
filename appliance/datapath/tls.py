"""TLS contexts: the server side chooses a certificate by SNI (exact, then wildcard, then
the first one given as the default); the client side talks to TLS backends."""

from __future__ import annotations

import ssl

from ..model import BackendTls, TlsCert

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


def _server_context(cert: TlsCert, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.set_alpn_protocols(alpn)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def server_context(certs: tuple[TlsCert, ...], http2: bool = False) -> ssl.SSLContext:
    """A context serving ``certs[0]`` by default and switching by SNI to the certificate
    whose hosts match the name the client asked for; with ``http2`` it offers h2 first
    by ALPN, then http/1.1."""
    alpn = ["h2", "http/1.1"] if http2 else ["http/1.1"]
    contexts = [_server_context(c, alpn) for c in certs]
    exact: dict[str, ssl.SSLContext] = {}
    wild: dict[str, ssl.SSLContext] = {}
    for cert, ctx in zip(certs, contexts, strict=True):
        for host in cert.hosts:
            if host.startswith("*."):
                wild.setdefault(host[2:], ctx)
            else:
                exact.setdefault(host, ctx)
    default = contexts[0]

    def choose(sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None,
               _: ssl.SSLContext) -> None:
        if not name:
            return
        name = name.lower().rstrip(".")
        ctx = exact.get(name)
        if ctx is None:
            dot = name.find(".")
            ctx = wild.get(name[dot + 1:]) if dot > 0 else None
        if ctx is not None and ctx is not default:
            sslobj.context = ctx

    default.sni_callback = choose
    return default


def client_context(spec: BackendTls, http2: bool = False) -> ssl.SSLContext:
    """A context for connections to TLS backends, verified against ``spec.ca`` (or the
    system store) unless verification is turned off; ``http2`` asks for h2 by ALPN."""
    ctx = ssl.create_default_context(cafile=spec.ca) if spec.verify else \
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"] if http2 else ["http/1.1"])
    if not spec.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
