"""A private RabbitMQ node that takes client certificates (EXTERNAL authentication), for the
tests of a fleet that logs in with one: scripts/rabbit-cluster runs it (one node, free ports,
its own epmd; tests.cluster.helpers drives the script), with a TLS listener, the
`rabbitmq_auth_mechanism_ssl` plugin and `ssl_cert_login_from = common_name`; openssl makes a
CA, the server's certificate and one client certificate per RabbitMQ user, in the node's own
folder, so that removing the node removes them too. PLAIN stays on for guest on the plain
listener (the test's own admin connection)."""

from __future__ import annotations

import contextlib
import glob
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from tests.cluster.helpers import Cluster, free_base_port

PLUGIN = "rabbitmq_auth_mechanism_ssl"
SBIN = Path("/usr/lib/rabbitmq/bin")
PLUGINS = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins"


def missing() -> str | None:
    """What this machine lacks for a TLS node, or None."""
    if not shutil.which("openssl"):
        return "openssl (to make the certificates)"
    if not (SBIN / "rabbitmq-server").exists() or not shutil.which("epmd"):
        return "the installed rabbitmq-server (scripts/rabbit-cluster runs it)"
    if not glob.glob(f"{PLUGINS}/{PLUGIN}-*"):
        return f"RabbitMQ's {PLUGIN} plugin (in {PLUGINS})"
    return None


def _openssl(*args: str) -> None:
    done = subprocess.run(
        ["openssl", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


@dataclass(frozen=True)
class Identity:
    """A certificate and its key: the files a client names in its URL."""

    cert: Path
    key: Path


class Authority:
    """A CA of the test's own, and the certificates it signs (2048-bit RSA, a day)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert = directory / "ca.pem"
        self._key = directory / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=sfworker test CA",
            "-keyout", str(self._key), "-out", str(self.cert),
        )  # fmt: skip

    def issue(self, common_name: str, *, server: bool = False) -> Identity:
        """A certificate for `common_name`: a client's (the CN is its RabbitMQ user), or the
        server's for 127.0.0.1 and localhost."""
        stem = self.directory / common_name
        key, request, cert = (stem.with_suffix(s) for s in (".key", ".csr", ".pem"))
        _openssl(
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={common_name}",
            "-keyout", str(key), "-out", str(request),
        )  # fmt: skip
        extensions = stem.with_suffix(".ext")
        extensions.write_text(
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n"
            if server
            else "extendedKeyUsage = clientAuth\n",
            encoding="utf-8",
        )
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(self.cert), "-CAkey", str(self._key),
            "-CAcreateserial", "-days", "1", "-extfile", str(extensions), "-out", str(cert),
        )  # fmt: skip
        return Identity(cert, key)


@dataclass
class TlsBroker:
    """The running node: `admin_url` (guest over the plain listener), `url_for` a certificate
    over TLS, `ctl` for rabbitmqctl."""

    cluster: Cluster
    authority: Authority
    tls_port: int

    @property
    def admin_url(self) -> str:
        return self.cluster.url(1)

    def ctl(self, *args: str, stdin: str | None = None) -> str:
        return self.cluster.ctl(*args, stdin=stdin)

    def identity(self, user: str) -> Identity:
        """A client certificate whose CN is `user` (RabbitMQ logs it in as that user)."""
        return self.authority.issue(user)

    def url_for(self, identity: Identity) -> str:
        """aiormq's URL for EXTERNAL authentication over TLS: no user, no password."""
        query = urlencode(
            {
                "auth": "external",
                "cafile": str(self.authority.cert),
                "certfile": str(identity.cert),
                "keyfile": str(identity.key),
            },
            safe="/",
            quote_via=quote,
        )
        return f"amqps://127.0.0.1:{self.tls_port}/?{query}"


@contextlib.contextmanager
def tls_broker(directory: Path) -> Iterator[TlsBroker]:
    """Start the node in `directory` (certificates under it); stop it and remove the folder
    on exit, also when the test failed."""
    base = free_base_port()
    tls_port = base + 4  # free_base_port checked it
    authority = Authority(directory / "tls")
    server = authority.issue("localhost", server=True)
    conf = directory / "tls.conf"
    conf.write_text(
        f"listeners.ssl.default = 127.0.0.1:{tls_port}\n"
        f"ssl_options.cacertfile = {authority.cert}\n"
        f"ssl_options.certfile = {server.cert}\n"
        f"ssl_options.keyfile = {server.key}\n"
        "ssl_options.verify = verify_peer\n"
        "ssl_options.fail_if_no_peer_cert = true\n"
        "auth_mechanisms.1 = EXTERNAL\n"
        "auth_mechanisms.2 = PLAIN\n"
        "ssl_cert_login_from = common_name\n",
        encoding="utf-8",
    )
    # The node's own folder holds the certificates: `rabbit-cluster clean` (here, or .ci/run's
    # sweep of SFWORKER_TEST_CLUSTER_ROOT) removes them with it.
    cluster = Cluster(base, directory, nodes=1, conf=conf, plugins=(PLUGIN,))
    try:
        cluster.run("start")
        yield TlsBroker(cluster, authority, tls_port)
    finally:
        with contextlib.suppress(Exception):
            cluster.run("clean", limit=120)
        shutil.rmtree(directory, ignore_errors=True)
