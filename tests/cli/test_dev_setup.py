"""``phx dev-setup``: a CA, certificates that verify for each service name, configs that load."""

from __future__ import annotations

import argparse
import ssl
import tomllib
from pathlib import Path

import pytest
from cryptography import x509

from phx.cli import dev_setup
from phx.config import load_config


def test_writes_ca_certificates_and_configs(tmp_path: Path) -> None:
    setup = dev_setup.write_dev_setup(tmp_path / "dev", ["a.test", "B.test", "c.test"], base_port=9500)
    assert setup.ports == {"a.test": 9500, "b.test": 9501, "c.test": 9502}
    ca = x509.load_pem_x509_certificate(setup.ca_file.read_bytes())
    for domain, path in setup.configs.items():
        config = load_config(path)
        config.check_files()
        assert str(config.server.domain) == domain and config.server.tls
        assert config.server.listen_port == setup.ports[domain]
        assert config.federation.ca_file == setup.ca_file
        assert config.server.database_url == f"sqlite://{tmp_path / 'dev' / domain / 'phx.sqlite3'}"
        overrides = {h: str(t) for h, t in config.federation.resolver_overrides.items()}
        assert overrides["ds.c.test"] == "127.0.0.1:9502" and len(overrides) == 9
        cert = x509.load_pem_x509_certificate((setup.directory / domain / "cert.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == {
            domain,
            f"as.{domain}",
            f"ds.{domain}",
            f"qs.{domain}",
        }
        # the CA file is what a TLS client needs to trust the server
        ctx = ssl.create_default_context(cafile=str(setup.ca_file))
        ctx.load_cert_chain(setup.directory / domain / "cert.pem", setup.directory / domain / "key.pem")
        assert (setup.directory / domain / "key.pem").stat().st_mode & 0o077 == 0
    hosts = tomllib.loads(setup.hosts_file.read_text())["hosts"]
    assert hosts["qs.a.test"] == "127.0.0.1:9500" and len(hosts) == 9


def test_cli_prints_instructions_and_refuses_bad_domains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(directory=tmp_path, domains="a.test,b.test", base_port=9443)
    assert dev_setup.run(args) == 0
    out = capsys.readouterr().out
    assert f"phx serve --config {tmp_path / 'a.test.toml'}" in out
    assert f"--ca {tmp_path / 'ca.pem'}" in out
    for domains in ("a.test,a.test", "", "127.0.0.1", "bad_name.test"):
        args = argparse.Namespace(directory=tmp_path / "x", domains=domains, base_port=9443)
        assert dev_setup.run(args) == 1
        assert capsys.readouterr().err.startswith("phx dev-setup: error: ")
