"""Accounts files whose account `main` talks to a simulator, and keys for jwt-bearer."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_REFRESH_TOKEN


def rsa_key_pair() -> tuple[str, str]:
    """A fresh RSA-2048 key for jwt-bearer: (private key PEM in PKCS8, public key PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


def write_accounts(
    path: Path,
    base_url: str,
    *,
    extra: str = "",
    flow: str = "client_credentials",
    credentials: str | None = None,
) -> Path:
    """An accounts file whose account `main` talks to the simulator at `base_url`.
    `credentials` replaces the simulator's default secret lines (a wrong secret, a JWT key)."""
    secret = f'client_secret = "{DEFAULT_CLIENT_SECRET}"\n'
    if flow == "refresh_token":
        secret += f'refresh_token = "{DEFAULT_REFRESH_TOKEN}"\n'
    if credentials is not None:
        secret = credentials
    path.write_text(
        "[accounts.main]\n"
        'tenant = "acme"\n'
        "default = true\n"
        f'instance_url = "{base_url}"\n'
        f'flow = "{flow}"\n'
        f'client_id = "{DEFAULT_CLIENT_ID}"\n' + secret + extra,
        encoding="utf-8",
    )
    return path
