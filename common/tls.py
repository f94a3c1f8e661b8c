"""Mutual TLS between edge, collector and cloud: a cluster CA made at deploy time.

Every component holds the cluster CA certificate and its own certificate and key,
signed by that CA. Servers require a client certificate from the same CA; clients
present theirs and check the server's. A process without a cluster certificate
cannot register as an edge, query the collector, or ask an edge anything.

Identity is the *role*, not the address: each leaf certificate names its role
(``pxo-edge``, ``pxo-collector``, ``pxo-cloud``) as its common name and a DNS
SAN, and clients check the name of the role they dial
(``grpc.ssl_target_name_override``). Edges are dialed at pod IPs that no
certificate made at deploy time can list; what matters is that the peer holds a
certificate of this cluster's CA for the expected role. The loopback names and
addresses (``localhost``, 127.0.0.1, ::1) and any extra hosts are in the SANs too,
so a tool that dials by address still verifies.

Keys are ECDSA P-256 (what gRPC's BoringSSL handles everywhere); files are PEM,
written atomically with mode 0600 in a 0700 directory. Rotation is re-running
the deploy: a new CA and new leaves replace the old ones, and a certificate of
the old CA is refused from then on.

    files = generate_cluster(Path("/var/lib/pxo/tls"))   # {"ca": ..., "edge": TlsFiles, ...}
    server.add_secure_port(addr, server_credentials(files["edge"]))
    channel = channel_factory(files["edge"], peer="collector")("10.0.0.5:50700")
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pxo.common.settings import Settings, setting

if TYPE_CHECKING:  # grpc and cryptography are imported where they are used (the CLI starts fast)
    import grpc
    from cryptography import x509

    Handler = grpc.RpcMethodHandler[Any, Any]

ROLES = ("edge", "collector", "cloud")
NAMESPACE = "pxo"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class TlsError(Exception):
    """A TLS file is missing, unreadable or invalid; the message names the file and the flag."""


def role_name(role: str) -> str:
    """The name a certificate of ``role`` carries and a client checks: ``pxo-edge``."""
    return f"pxo-{role}"


@dataclass(frozen=True)
class TlsFiles:
    """The three files a component needs: the cluster CA, its own certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_settings(cls, ca: Path | None, cert: Path | None, key: Path | None, *,
                      flag: str = "--tls") -> TlsFiles | None:
        """None when none is set (plain gRPC); all three, or a TlsError naming what is missing."""
        given = {"ca": ca, "cert": cert, "key": key}
        if not any(given.values()):
            return None
        missing = [f"{flag}-{k}" for k, v in given.items() if not v]
        if missing:
            raise TlsError(f"TLS needs {flag}-ca, {flag}-cert and {flag}-key together; missing {', '.join(missing)}")
        assert ca and cert and key
        return cls(Path(ca), Path(cert), Path(key))


@dataclass(frozen=True)
class TlsMaterial:
    ca: bytes
    cert: bytes
    key: bytes


# -- generation --------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (a reader never sees half a key)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for h in hosts:
        if not h or h in seen:
            continue
        seen.add(h)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def generate_material(*, hosts: Iterable[str] = (), valid_days: int = 365,
                      now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> dict[str, TlsMaterial]:
    """A new cluster CA and one certificate and key per role, in memory: ``{role: TlsMaterial}``
    (every role's ``ca`` is the same CA certificate). The CA's private key is dropped here."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    start = now() - dt.timedelta(minutes=5)  # a little clock skew between nodes is fine
    end = start + dt.timedelta(days=valid_days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pxo"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"pxo cluster CA {start:%Y-%m-%dT%H:%M:%SZ}")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    extra = list(hosts)
    out: dict[str, TlsMaterial] = {}
    for role in ROLES:
        name = role_name(role)
        key = ec.generate_private_key(ec.SECP256R1())
        dns = [name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pxo"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            # every component is a server to some and a client of another (the edge: both)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(_sans([*dns, *LOOPBACK_HOSTS, *extra])), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        out[role] = TlsMaterial(ca=ca_pem, cert=cert.public_bytes(serialization.Encoding.PEM),
                                key=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return out


def generate_cluster(directory: Path, *, hosts: Iterable[str] = (), valid_days: int = 365,
                     now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> dict[str, TlsFiles]:
    """A new cluster CA and one certificate per role in ``directory``, replacing what is there.

    Writes ``ca.crt`` and ``<role>.crt``/``<role>.key`` for every role (all 0600, the
    directory 0700). The CA's private key is never written: a new CA is made on every
    deploy (rotation), so nothing needs to sign later and nothing can be stolen to.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    material = generate_material(hosts=hosts, valid_days=valid_days, now=now)
    out: dict[str, TlsFiles] = {}
    leaves: list[tuple[Path, bytes]] = []
    for role, m in material.items():
        files = TlsFiles(directory / "ca.crt", directory / f"{role}.crt", directory / f"{role}.key")
        leaves += [(files.key, m.key), (files.cert, m.cert)]
        out[role] = files
    # Keys and leaves first, the CA last: a process that reads mid-rotation sees a
    # mismatched set and fails its handshake rather than trusting a half-old set.
    for path, data in leaves:
        _write_private(path, data)
    _write_private(directory / "ca.crt", material[ROLES[0]].ca)
    return out


# -- loading -----------------------------------------------------------------------


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{flag} {path}: no such file") from None
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{flag} {path}: not a PEM file")
    return data


def check_material(m: TlsMaterial, *, names: tuple[str, str, str] = ("--tls-ca", "--tls-cert", "--tls-key"),
                   ) -> TlsMaterial:
    """``m`` checked: PEM, parseable, unencrypted key, and the key belongs to the certificate.
    ``names`` say what each part is called in the TlsError (flags and files, or request fields)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_name, cert_name, key_name = names
    for data, name in ((m.ca, ca_name), (m.cert, cert_name), (m.key, key_name)):
        if b"-----BEGIN " not in data:
            raise TlsError(f"{name}: not a PEM file")
    try:
        x509.load_pem_x509_certificates(m.ca)
    except ValueError:
        raise TlsError(f"{ca_name}: not a PEM certificate") from None
    try:
        leaf = x509.load_pem_x509_certificate(m.cert)
    except ValueError:
        raise TlsError(f"{cert_name}: not a PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(m.key, password=None)
    except (ValueError, TypeError):
        raise TlsError(f"{key_name}: not an unencrypted PEM private key") from None
    pub = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*pub) != leaf.public_key().public_bytes(*pub):
        raise TlsError(f"{key_name} does not belong to {cert_name}")
    return m


def load(files: TlsFiles, *, flag: str = "--tls") -> TlsMaterial:
    """The three PEM files, checked: readable, parseable, and the key belongs to the certificate."""
    ca, cert, key = _read(files.ca, f"{flag}-ca"), _read(files.cert, f"{flag}-cert"), _read(files.key, f"{flag}-key")
    return check_material(TlsMaterial(ca=ca, cert=cert, key=key),
                          names=(f"{flag}-ca {files.ca}", f"{flag}-cert {files.cert}", f"{flag}-key {files.key}"))


def server_credentials(files: TlsFiles, *, flag: str = "--tls") -> grpc.ServerCredentials:
    """Server side of mutual TLS: our certificate, and a client certificate of the cluster CA required."""
    import grpc

    m = load(files, flag=flag)
    return grpc.ssl_server_credentials([(m.key, m.cert)], root_certificates=m.ca, require_client_auth=True)


def channel_factory(files: TlsFiles | None, *, peer: str, flag: str = "--tls",
                    options: Mapping[str, str | int] | None = None) -> Callable[[str], grpc.Channel]:
    """A factory of channels to a ``peer`` role ("edge", "collector"): mutual TLS, or plain when ``files`` is None.

    The files are read once, now, so a missing file is reported at start, not at the first call.
    """
    import grpc

    if files is None:
        return grpc.insecure_channel
    return material_channel_factory(load(files, flag=flag), peer=peer, options=options)


def material_channel_factory(m: TlsMaterial, *, peer: str,
                             options: Mapping[str, str | int] | None = None) -> Callable[[str], grpc.Channel]:
    """As channel_factory, from PEM held in memory (``m``, checked by the caller with check_material)."""
    import grpc

    creds = grpc.ssl_channel_credentials(root_certificates=m.ca, private_key=m.key, certificate_chain=m.cert)
    opts = [("grpc.ssl_target_name_override", role_name(peer)), *(options or {}).items()]

    def make(address: str) -> grpc.Channel:
        return grpc.secure_channel(address, creds, options=opts)

    return make


def add_port(server: grpc.Server, listen: str, files: TlsFiles | None, *, flag: str = "--tls") -> int:
    """Listen on ``listen``: with mutual TLS when ``files`` is given, plain otherwise. Returns the port (0: failed)."""
    if files is None:
        return server.add_insecure_port(listen)
    return server.add_secure_port(listen, server_credentials(files, flag=flag))


def serve_health(servicer: object, listen: str) -> tuple[grpc.Server, str]:
    """A plain-text server answering only ``grpc.health.v1`` (for Kubernetes gRPC probes, which
    cannot do TLS), sharing ``servicer`` with the TLS server so both report the same state."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health_pb2_grpc

    from pxo.common.addr import split_hostport

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    host, _ = split_hostport(listen)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen} for health checks (address in use?)")
    server.start()
    return server, f"{host}:{port}"


# -- who may call what ---------------------------------------------------------------

# Which role's certificate may call which methods (longest prefix first wins). With TLS on,
# an edge's certificate cannot query other edges or the whole cluster, and the cloud's cannot
# register a node: a stolen node certificate reaches no other node's data directly.
EDGE_CALLERS: Mapping[str, frozenset[str]] = {
    "/pxo.v1.Edge/": frozenset({"collector"}),
}
COLLECTOR_CALLERS: Mapping[str, frozenset[str]] = {
    "/pxo.v1.Collector/Register": frozenset({"edge"}),
    "/pxo.v1.Collector/Heartbeat": frozenset({"edge"}),
    "/pxo.v1.Collector/": frozenset({"cloud"}),
}


def peer_roles(context: grpc.ServicerContext) -> set[str]:
    """The roles named by the verified client certificate of this call (empty without one)."""
    found: bytes | Iterable[bytes] = context.auth_context().get("x509_common_name", [])
    names: list[bytes] = [found] if isinstance(found, bytes) else list(found)
    decoded = [n.decode(errors="replace") for n in names]
    return {n.removeprefix("pxo-") for n in decoded if n.startswith("pxo-")}


def _role_interceptor_class() -> type:
    import grpc

    class PeerRoleInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]  # grpc-stubs: generic
        """Refuses (PERMISSION_DENIED) a call whose client certificate is not of a role allowed for
        the method. Methods under no prefix (the health service) pass."""

        def __init__(self, callers: Mapping[str, frozenset[str]]) -> None:
            self._callers = sorted(callers.items(), key=lambda kv: -len(kv[0]))

        def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
                              details: grpc.HandlerCallDetails) -> Handler | None:
            handler = continuation(details)
            roles = next((r for prefix, r in self._callers if details.method.startswith(prefix)), None)
            if handler is None or roles is None:
                return handler
            method = details.method

            def check(context: grpc.ServicerContext) -> None:
                have = peer_roles(context)
                if not have & roles:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                  f"{method} is for the {' or '.join(sorted(roles))} certificate of this cluster, "
                                  f"not {' or '.join(sorted(have)) or 'an unnamed one'}")

            if handler.unary_unary is not None:
                uu = handler.unary_unary

                def unary(request: object, context: grpc.ServicerContext) -> object:
                    check(context)
                    return uu(request, context)

                return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                                           response_serializer=handler.response_serializer)
            if handler.unary_stream is not None:
                us = handler.unary_stream

                def stream(request: object, context: grpc.ServicerContext) -> Iterator[object]:
                    check(context)
                    yield from us(request, context)

                return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=handler.request_deserializer,
                                                            response_serializer=handler.response_serializer)
            return handler  # pxo has no client-streaming methods

    return PeerRoleInterceptor


def role_interceptors(files: TlsFiles | None,
                      callers: Mapping[str, frozenset[str]]) -> list[grpc.ServerInterceptor[Any, Any]]:
    """The role check for a server, or nothing when it serves plain gRPC (no certificates to check)."""
    if files is None:
        return []
    return [_role_interceptor_class()(callers)]


@dataclasses.dataclass(frozen=True)
class TlsSettings(Settings):
    """The three TLS settings every component has (--tls-ca, --tls-cert, --tls-key):
    all three or none; none means plain gRPC."""

    tls_ca: Path | None = setting(None, help="cluster CA certificate (PEM): with --tls-cert and --tls-key, "
                                  "mutual TLS on every gRPC connection; unset: plain gRPC")
    tls_cert: Path | None = setting(None, help="this component's certificate (PEM), signed by --tls-ca")
    tls_key: Path | None = setting(None, help="this component's private key (PEM, mode 0600)")

    def validate(self) -> None:
        try:
            TlsFiles.from_settings(self.tls_ca, self.tls_cert, self.tls_key)
        except TlsError as exc:
            raise ValueError(str(exc)) from None

    @property
    def tls(self) -> TlsFiles | None:
        return TlsFiles.from_settings(self.tls_ca, self.tls_cert, self.tls_key)


def material_from_pem(ca: str, cert: str, key: str, *,
                      names: tuple[str, str, str] = ("tls_ca", "tls_cert", "tls_key")) -> TlsMaterial | None:
    """PEM text given as three fields (a cluster record, a request): None when all are empty (plain
    gRPC), else the checked material; a TlsError naming the field otherwise."""
    given = dict(zip(names, (ca, cert, key), strict=True))
    if not any(v.strip() for v in given.values()):
        return None
    missing = [n for n, v in given.items() if not v.strip()]
    if missing:
        raise TlsError(f"TLS needs {', '.join(names[:2])} and {names[2]} together; missing {', '.join(missing)}")
    return check_material(TlsMaterial(ca=ca.encode(), cert=cert.encode(), key=key.encode()), names=names)
