"""``phx dev-setup DIR --domains a.test,b.test``: everything to run federating homeservers on this machine.

Writes into ``DIR``:

* ``ca.pem`` / ``ca-key.pem`` — a local certificate authority (Ed25519... no: ECDSA P-256, which every TLS
  stack accepts), valid for ten years;
* ``<domain>/cert.pem`` / ``<domain>/key.pem`` — one certificate per homeserver, valid for its service
  names ``as.``, ``ds.`` and ``qs.<domain>`` (one process serves all three);
* ``<domain>.toml`` — a homeserver config: TLS, SQLite under ``<domain>/``, listening on loopback, with
  ``federation.resolver_overrides`` pointing every domain's service names at its loopback port and
  ``federation.ca_file`` the local CA;
* ``hosts.toml`` — the same overrides for the client (``phx client --hosts DIR/hosts.toml``).

The CA is generated with ``cryptography`` (a runtime dependency); nothing is fetched from the network.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from phx.config import load_config
from phx.errors import ConfigError, ValidationError
from phx.identifiers import Fqdn

__all__ = ["DevSetup", "add_parser", "run", "write_dev_setup"]

DEFAULT_BASE_PORT = 9443
CA_DAYS = 3650
CERT_DAYS = 825


@dataclass(frozen=True, slots=True)
class DevSetup:
    directory: Path
    ca_file: Path
    hosts_file: Path
    configs: dict[str, Path]
    ports: dict[str, int]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phx dev-setup local CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    names: Sequence[str], ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config_text(domain: str, port: int, overrides: dict[str, str]) -> str:
    lines = [
        f"# phx homeserver {domain}, written by phx dev-setup. Start with: phx serve --config {domain}.toml",
        "",
        "[server]",
        f"domain = {_toml_str(domain)}",
        'listen_host = "127.0.0.1"',
        f"listen_port = {port}",
        f"tls_cert = {_toml_str(f'{domain}/cert.pem')}",
        f"tls_key = {_toml_str(f'{domain}/key.pem')}",
        f"data_dir = {_toml_str(domain)}",
        f"database_url = {_toml_str(f'sqlite://{domain}/phx.sqlite3')}",
        "",
        "[federation]",
        'ca_file = "ca.pem"',
        "",
        "[federation.resolver_overrides]",
    ]
    lines += [f"{_toml_str(host)} = {_toml_str(target)}" for host, target in sorted(overrides.items())]
    return "\n".join(lines) + "\n"


def write_dev_setup(
    directory: Path,
    domains: Sequence[str],
    *,
    base_port: int = DEFAULT_BASE_PORT,
    ports: Sequence[int] | None = None,
) -> DevSetup:
    """Write the CA, certificates and configs; ``ports`` (one per domain) overrides ``base_port + i``."""
    names = [Fqdn.parse(d.strip()).value for d in domains if d.strip()]
    if not names:
        raise ValidationError("no domains given")
    if len(set(names)) != len(names):
        raise ValidationError("a domain is listed twice")
    chosen = list(ports) if ports is not None else [base_port + i for i in range(len(names))]
    if len(chosen) != len(names):
        raise ValidationError("one port per domain is needed")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca, ca_key = _ca(now)
    ca_file = directory / "ca.pem"
    _write(ca_file, ca.public_bytes(serialization.Encoding.PEM))
    _write(directory / "ca-key.pem", _pem_key(ca_key), private=True)
    overrides = {
        f"{service}.{domain}": f"127.0.0.1:{port}"
        for domain, port in zip(names, chosen, strict=True)
        for service in ("as", "ds", "qs")
    }
    configs: dict[str, Path] = {}
    for domain, port in zip(names, chosen, strict=True):
        cert, key = _leaf([f"as.{domain}", f"ds.{domain}", f"qs.{domain}", domain], ca, ca_key, now)
        _write(directory / domain / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
        _write(directory / domain / "key.pem", _pem_key(key), private=True)
        path = directory / f"{domain}.toml"
        _write(path, _config_text(domain, port, overrides).encode())
        load_config(path)  # what we wrote must be a valid config
        configs[domain] = path
    hosts = directory / "hosts.toml"
    lines = ["# service name = loopback address, for: phx client --hosts hosts.toml", "[hosts]"]
    lines += [f"{_toml_str(h)} = {_toml_str(t)}" for h, t in sorted(overrides.items())]
    _write(hosts, ("\n".join(lines) + "\n").encode())
    return DevSetup(directory, ca_file, hosts, configs, dict(zip(names, chosen, strict=True)))


def instructions(setup: DevSetup) -> str:
    d = setup.directory
    lines = [
        f"wrote a local CA, certificates and configs to {d}",
        "",
        "start each homeserver (one terminal each):",
    ]
    lines += [f"  phx serve --config {path}" for path in setup.configs.values()]
    first = next(iter(setup.configs))
    lines += [
        "",
        "then use the client against them, e.g.:",
        f"  phx client --home ./alice --ca {setup.ca_file} --hosts {setup.hosts_file} register alice@{first}",
        "  phx client --home ./alice sync            (the CA and hosts are remembered)",
    ]
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("dev-setup", help="write a local CA, certificates and homeserver configs")
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument(
        "--domains", required=True, metavar="A,B,…", help="comma-separated homeserver domains"
    )
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, metavar="PORT", help="first port")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        setup = write_dev_setup(args.directory, args.domains.split(","), base_port=args.base_port)
    except (ValidationError, ConfigError, OSError) as e:
        print(f"phx dev-setup: error: {e}", file=sys.stderr)
        return 1
    print(instructions(setup))
    return 0
