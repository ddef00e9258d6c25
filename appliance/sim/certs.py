"""Throwaway self-signed certificates for the demo and the simulated cluster, made with
the ``openssl`` command (a Debian base package) so that the runtime needs no test tools."""

from __future__ import annotations

import os
import subprocess


def self_signed(directory: str, name: str, dns: tuple[str, ...] = (),
                ips: tuple[str, ...] = ()) -> tuple[str, str]:
    """(cert, key) PEM paths of a 2-day P-256 certificate for ``dns`` names and ``ips``;
    it is its own CA (``CA:TRUE``), so a client may trust the certificate file itself."""
    cert = os.path.join(directory, f"{name}.crt")
    key = os.path.join(directory, f"{name}.key")
    san = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    f"/CN={(dns or ips)[0]}", "-addext", f"subjectAltName={san}",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key
