"""Configuration loading: defaults, every rejection class, paths, docs and samples in sync."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from phx.config import (
    DAY,
    HOUR,
    Config,
    HostPort,
    load_config,
    parse_config,
    parse_duration,
)
from phx.errors import ConfigError
from phx.identifiers import Fqdn, Service

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs" / "config.md"


def cfg(server: str = "", rest: str = "") -> Config:
    return parse_config(f'[server]\ndomain = "a.test"\nplain_http = true\n{server}\n{rest}')


def rejects(key: str, server: str = "", rest: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        cfg(server, rest)
    msg = str(info.value)
    assert msg.startswith(f"{key}:"), msg
    return msg


def option_paths(cls: type[Any] = Config, prefix: str = "") -> list[str]:
    out: list[str] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name.rstrip('_')}"
        if "section" in f.metadata:
            out += option_paths(f.metadata["section"], key + ".")
        else:
            out.append(key)
    return out


# --- defaults ----------------------------------------------------------------------------------------


def test_defaults_follow_the_book() -> None:
    c = Config.default("a.test")
    assert c.server.domain == Fqdn("a.test")
    assert c.server.plain_http and not c.server.tls
    assert c.server.services == frozenset(Service)
    assert c.server.database_url == "sqlite://data/phx.sqlite3"
    assert (c.qs.max_auth_token_age, c.qs.max_client_record_age) == (HOUR, 90 * DAY)
    assert (c.qs.max_messages_per_dequeue, c.qs.max_client_records_per_user) == (500, 10)
    assert (c.ds.max_auth_token_age, c.ds.max_client_inactivity, c.ds.padding_percentile) == (
        HOUR,
        90 * DAY,
        8,
    )
    assert c.as_.max_client_record_age == 90 * DAY
    assert c.federation.policy == "open" and not c.federation.blocklist
    assert c.federation.dedup_retention >= DAY and c.federation.outbox.max_age <= DAY
    assert dict(c.federation.resolver_overrides) == {}


def test_default_with_tls(tmp_path: Path) -> None:
    c = Config.default(Fqdn("a.test"), tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    assert c.server.tls and not c.server.plain_http


def test_default_rejects_bad_domain() -> None:
    with pytest.raises(ConfigError, match="^server.domain:"):
        Config.default("not a domain")


def test_minimal_file_equals_default() -> None:
    assert cfg() == Config.default("a.test")


def test_config_is_frozen() -> None:
    c = Config.default("a.test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.qs.max_messages_per_dequeue = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.federation.resolver_overrides["x"] = HostPort("h", 1)  # type: ignore[index]


# --- samples and documentation -----------------------------------------------------------------------


def test_full_example_loads_and_sets_every_option() -> None:
    path = EXAMPLES / "phx.toml"
    c = load_config(path)
    assert c.server.domain == Fqdn("example.com")
    assert c.server.tls and c.server.tls_cert == Path("/etc/phx/tls/fullchain.pem")
    assert c.server.database_url.startswith("postgresql://")
    assert c.federation.blocklist == frozenset({Fqdn("spam.example")})
    assert c.federation.resolver_overrides["qs.partner.example"] == HostPort("10.0.0.7", 8443)
    text = path.read_text()
    for key in option_paths():
        leaf = key.rsplit(".", 1)[1]
        pattern = rf"^(# )?{leaf} = |^\[{re.escape(key)}\]$"
        assert re.search(pattern, text, re.M), f"{key} missing from examples/phx.toml"
    # Apart from the sample's choices, everything in it is the default.
    assert c.qs == Config.default("a.test").qs
    assert c.as_ == Config.default("a.test").as_


def test_dev_example_loads() -> None:
    c = load_config(EXAMPLES / "dev.toml")
    assert c.server.domain == Fqdn("localhost") and c.server.plain_http
    assert c.server.data_dir == EXAMPLES / "data"
    assert c.server.database_url == f"sqlite://{EXAMPLES / 'data' / 'phx.sqlite3'}"
    assert not c.federates_with(Fqdn("b.test"))


def test_every_option_is_documented_and_nothing_else() -> None:
    text = DOCS.read_text()
    paths = set(option_paths())
    for key in paths:
        assert f"| `{key}` |" in text, f"{key} is not documented in docs/config.md"
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", text, re.M))
    assert documented == paths


def test_every_option_has_a_docstring() -> None:
    import inspect

    import phx.config as mod

    source = inspect.getsource(mod)
    for key in option_paths():
        leaf = key.rsplit(".", 1)[1]
        if leaf in ("outbox", "rate_limit", "server", "federation", "ds", "qs"):
            continue
        name = "as_" if leaf == "as" else leaf
        assert re.search(rf'^    {name}: .*\n    """', source, re.M), f"{key} has no docstring"


# --- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (3600, 3600.0),
        (0.5, 0.5),
        ("90d", 90 * 86400.0),
        ("1h30m", 5400.0),
        ("2w", 14 * 86400.0),
        ("250ms", 0.25),
        ("3000ms", 3.0),
        ("1.5s", 1.5),
        ("45s", 45.0),
        (" 5m ", 300.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "1", "h", "1x", "-1h", "1h 30m", "1H", "ms", True, None, [1], -5, float("inf"), float("nan")]
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_duration_options() -> None:
    c = cfg(rest='[qs]\nmax_client_record_age = "30d"\nmax_auth_token_age = 600\n')
    assert (c.qs.max_client_record_age, c.qs.max_auth_token_age) == (30 * DAY, 600)
    c = cfg(rest='[federation]\nconnect_timeout = "250ms"\nrequest_timeout = 2\n')
    assert (c.federation.connect_timeout, c.federation.request_timeout) == (0.25, 2.0)


def test_duration_rejections() -> None:
    assert "duration" in rejects(
        "qs.max_client_record_age", rest='[qs]\nmax_client_record_age = "ninety days"'
    )
    assert "duration" in rejects("qs.max_client_record_age", rest="[qs]\nmax_client_record_age = true")
    assert "whole number" in rejects("as.opaque_state_expiry", rest="[as]\nopaque_state_expiry = 60.5")
    assert "duration" in rejects("as.opaque_state_expiry", rest="[as]\nopaque_state_expiry = inf")
    assert "at least 10s" in rejects("as.opaque_state_expiry", rest="[as]\nopaque_state_expiry = 5")
    assert cfg(rest='[as]\nopaque_state_expiry = "30000ms"').as_.opaque_state_expiry == 30
    assert "whole number" in rejects("as.opaque_state_expiry", rest='[as]\nopaque_state_expiry = "1500ms"')
    assert "at least 1d" in rejects(
        "federation.dedup_retention", rest='[federation]\ndedup_retention = "23h"'
    )
    assert "at most 1d" in rejects("federation.outbox.max_age", rest='[federation.outbox]\nmax_age = "25h"')
    assert "duration from more than 0" in rejects(
        "federation.connect_timeout", rest="[federation]\nconnect_timeout = 0"
    )
    assert "duration from more than 0" in rejects(
        "federation.outbox.backoff_base", rest="[federation.outbox]\nbackoff_base = -1"
    )
    assert "from 0 to 1s" in rejects("federation.outbox.linger", rest='[federation.outbox]\nlinger = "2s"')
    assert "from 0 to 1s" in rejects("federation.outbox.linger", rest="[federation.outbox]\nlinger = -1")
    assert cfg(rest="[federation.outbox]\nlinger = 0").federation.outbox.linger == 0


# --- structural rejections ---------------------------------------------------------------------------


def test_unknown_keys() -> None:
    rejects("bogus", rest="[bogus]\nx = 1")
    rejects("server.bogus", server="bogus = 1")
    rejects("qs.max_messages", rest="[qs]\nmax_messages = 1")
    rejects("federation.outbox.retries", rest="[federation.outbox]\nretries = 3")
    with pytest.raises(ConfigError, match="^as_: unknown option"):  # the Python field name is not a key
        parse_config('as_ = {}\n[server]\ndomain = "a.test"\nplain_http = true\n')


def test_sections_must_be_tables() -> None:
    with pytest.raises(ConfigError, match="^as: expected a table"):
        parse_config('as = 5\n[server]\ndomain = "a.test"\nplain_http = true\n')
    with pytest.raises(ConfigError, match="^server: expected a table"):
        parse_config("server = 5\n")
    assert "expected a table" in rejects("federation.outbox", rest="[federation]\noutbox = 1")


def test_required_keys() -> None:
    with pytest.raises(ConfigError, match="^server: required"):
        parse_config("[qs]\nmax_client_records_per_user = 3\n")
    with pytest.raises(ConfigError, match="^server.domain: required"):
        parse_config("[server]\nplain_http = true\n")


def test_invalid_toml() -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_config("[server\n")


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("server = [")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(bad))}: invalid TOML"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[server]\ndomain = "a.test"\nplain_http = true\n[qs]\nmax_messages_per_dequeue = 0\n')
    with pytest.raises(ConfigError, match="^qs.max_messages_per_dequeue: expected a positive integer$"):
        load_config(wrong)


# --- value rejections --------------------------------------------------------------------------------


def test_integer_rejections() -> None:
    msg = rejects("qs.max_messages_per_dequeue", rest="[qs]\nmax_messages_per_dequeue = 0")
    assert msg == "qs.max_messages_per_dequeue: expected a positive integer"
    rejects("qs.max_messages_per_dequeue", rest='[qs]\nmax_messages_per_dequeue = "500"')
    rejects("qs.max_messages_per_dequeue", rest="[qs]\nmax_messages_per_dequeue = true")
    rejects("qs.max_messages_per_dequeue", rest="[qs]\nmax_messages_per_dequeue = 1.5")
    assert "between 1 and 10" in rejects("ds.padding_percentile", rest="[ds]\npadding_percentile = 11")
    rejects("ds.padding_percentile", rest="[ds]\npadding_percentile = 0")
    rejects("server.listen_port", server="listen_port = 70000")
    rejects("server.listen_port", server="listen_port = -1")
    assert "at least 1024" in rejects("server.max_request_size", server="max_request_size = 100")
    assert "non-negative" in rejects("as.domain_token_allowance", rest="[as]\ndomain_token_allowance = -1")
    assert cfg(rest="[as]\ndomain_token_allowance = 0").as_.domain_token_allowance == 0
    assert cfg(server="listen_port = 0").server.listen_port == 0


def test_rate_rejections() -> None:
    rejects("federation.rate_limit.per_domain_rate", rest="[federation.rate_limit]\nper_domain_rate = -1")
    rejects("federation.rate_limit.per_domain_rate", rest='[federation.rate_limit]\nper_domain_rate = "50"')
    rejects("federation.rate_limit.per_queue_rate", rest="[federation.rate_limit]\nper_queue_rate = inf")
    rejects("federation.rate_limit.per_queue_burst", rest="[federation.rate_limit]\nper_queue_burst = 0")
    c = cfg(rest="[federation.rate_limit]\nper_domain_rate = 0\nper_queue_rate = 2.5")
    assert (c.federation.rate_limit.per_domain_rate, c.federation.rate_limit.per_queue_rate) == (0.0, 2.5)


def test_bool_and_choice_rejections() -> None:
    with pytest.raises(ConfigError, match="^server.plain_http: expected true or false"):
        parse_config('[server]\ndomain = "a.test"\nplain_http = "yes"\n')
    assert "'open'" in rejects("federation.policy", rest='[federation]\npolicy = "closed"')
    rejects("server.log_level", server='log_level = "verbose"')


def test_domain_rejections() -> None:
    with pytest.raises(ConfigError, match="^server.domain:"):
        parse_config('[server]\ndomain = "bad_domain.test"\nplain_http = true\n')
    with pytest.raises(ConfigError, match="^server.domain:"):
        parse_config("[server]\ndomain = 5\nplain_http = true\n")
    long = ".".join(["a" * 63] * 3 + ["b" * 59])  # 251 characters: as.<domain> would not fit
    with pytest.raises(ConfigError, match="^server.domain: too long"):
        parse_config(f'[server]\ndomain = "{long}"\nplain_http = true\n')
    assert parse_config('[server]\ndomain = "A.Test"\nplain_http = true\n').server.domain == Fqdn("a.test")


def test_domain_list_rejections() -> None:
    rejects("federation.blocklist[1]", rest='[federation]\nblocklist = ["ok.test", "bad..test"]')
    rejects("federation.blocklist", rest='[federation]\nblocklist = "ok.test"')
    c = cfg(rest='[federation]\nblocklist = ["B.test", "b.test"]')
    assert c.federation.blocklist == frozenset({Fqdn("b.test")})


def test_services() -> None:
    assert cfg(server='services = ["qs"]').server.services == frozenset({Service.QS})
    rejects("server.services", server="services = []")
    rejects("server.services", server='services = "as"')
    rejects("server.services[1]", server='services = ["as", "xs"]')
    assert "twice" in rejects("server.services[1]", server='services = ["as", "as"]')


def test_resolver_overrides() -> None:
    c = cfg(
        rest='[federation.resolver_overrides]\n"qs.b.test" = "127.0.0.1:9443"\n"AS.b.test" = "[::1]:9444"\n'
        '"ds.b.test" = "localhost:9445"\n'
    )
    o = c.federation.resolver_overrides
    assert o["qs.b.test"] == HostPort("127.0.0.1", 9443)
    assert o["as.b.test"] == HostPort("::1", 9444) and str(o["as.b.test"]) == "[::1]:9444"
    assert o["ds.b.test"] == HostPort("localhost", 9445)
    for target in ['"127.0.0.1"', '"h.test:0"', '"h.test:70000"', '"bad_host:1"', '"::1:80"', "80"]:
        rejects(
            "federation.resolver_overrides.qs.b.test",
            rest=f'[federation.resolver_overrides]\n"qs.b.test" = {target}',
        )
    assert "quote" in rejects(
        "federation.resolver_overrides.qs", rest='[federation.resolver_overrides]\nqs.b.test = "h:1"'
    )
    rejects(
        "federation.resolver_overrides.bad_name", rest='[federation.resolver_overrides]\nbad_name = "h:1"'
    )
    rejects("federation.resolver_overrides", rest='[federation]\nresolver_overrides = "x"')


def test_database_url(tmp_path: Path) -> None:
    assert cfg(server='database_url = "sqlite:///srv/phx.db"').server.database_url == "sqlite:///srv/phx.db"
    assert cfg(server='database_url = "sqlite://:memory:"').server.database_url == "sqlite://:memory:"
    pg = "postgresql://phx:secret@db:5432/phx"
    assert cfg(server=f'database_url = "{pg}"').server.database_url == pg
    rel = parse_config(
        '[server]\ndomain = "a.test"\nplain_http = true\ndatabase_url = "sqlite://db/x.sqlite3"\n', tmp_path
    )
    assert rel.server.database_url == f"sqlite://{tmp_path / 'db' / 'x.sqlite3'}"
    rejects("server.database_url", server='database_url = "mysql://db/phx"')
    rejects("server.database_url", server='database_url = "sqlite://"')
    rejects("server.database_url", server='database_url = "phx.db"')
    rejects("server.database_url", server="database_url = 5")


def test_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "phx.toml").write_text(
        '[server]\ndomain = "a.test"\ntls_cert = "tls/cert.pem"\ntls_key = "/abs/key.pem"\n'
        'data_dir = "state"\n[federation]\nca_file = "cas.pem"\n'
    )
    c = load_config(tmp_path / "phx.toml")
    assert c.server.tls_cert == tmp_path / "tls" / "cert.pem"
    assert c.server.tls_key == Path("/abs/key.pem")
    assert c.server.data_dir == tmp_path / "state"
    assert c.server.database_url == f"sqlite://{tmp_path / 'state' / 'phx.sqlite3'}"
    assert c.federation.ca_file == tmp_path / "cas.pem"
    rejects("server.data_dir", server='data_dir = ""')


# --- cross-field rules -------------------------------------------------------------------------------


def test_tls_rules() -> None:
    def server(body: str) -> Config:
        return parse_config(f'[server]\ndomain = "a.test"\n{body}\n')

    assert server('tls_cert = "/c.pem"\ntls_key = "/k.pem"').server.tls
    with pytest.raises(ConfigError, match="^server.tls_cert: TLS is required"):
        server("")
    with pytest.raises(ConfigError, match="^server.tls_key: .*together"):
        server('tls_cert = "/c.pem"')
    with pytest.raises(ConfigError, match="^server.tls_cert: .*together"):
        server('tls_key = "/k.pem"')
    with pytest.raises(ConfigError, match="^server.plain_http: cannot be combined"):
        server('tls_cert = "/c.pem"\ntls_key = "/k.pem"\nplain_http = true')


def test_federation_rules() -> None:
    rejects("federation.allowlist", rest='[federation]\nallowlist = ["b.test"]')
    rejects("federation.blocklist", rest='[federation]\npolicy = "allowlist"\nblocklist = ["b.test"]')
    rejects("federation.blocklist", rest='[federation]\nblocklist = ["a.test"]')
    rejects("federation.allowlist", rest='[federation]\npolicy = "allowlist"\nallowlist = ["a.test"]')
    rejects(
        "federation.outbox.backoff_max", rest='[federation.outbox]\nbackoff_base = "1m"\nbackoff_max = "30s"'
    )
    # There is no plaintext federation: the old testing switch is an unknown key.
    rejects("federation.insecure_plain_http", rest="[federation]\ninsecure_plain_http = true")


def test_credential_lifetime_rules() -> None:
    rejects("as.intermediate_credential_lifetime", rest='[as]\nas_credential_lifetime = "100d"')
    rejects("as.client_credential_max_lifetime", rest='[as]\nintermediate_credential_lifetime = "30d"')
    c = cfg(rest='[as]\nintermediate_credential_lifetime = "30d"\nclient_credential_max_lifetime = "30d"')
    assert c.as_.client_credential_max_lifetime == 30 * DAY


def test_as_defaults_in_docs_match_the_code() -> None:
    """Every documented [as] default, read back through the parser, is the code's default."""
    text = DOCS.read_text()
    defaults = Config.default("a.test").as_
    rows = re.findall(r"^\| `as\.([a-z_]+)` \| [^|]+ \| `([^`]+)` \|", text, re.M)
    assert {"new_domain_token_allowance", "domain_token_allowance_doubling"} <= {k for k, _ in rows}
    assert len(rows) == len(dataclasses.fields(defaults))
    for key, documented in rows:
        parsed = cfg(rest=f"[as]\n{key} = {documented}").as_
        assert getattr(parsed, key) == getattr(defaults, key), f"as.{key}: docs say {documented}"


def test_federated_token_allowance_ramp_options() -> None:
    c = Config.default("a.test").as_
    assert (c.domain_token_allowance, c.new_domain_token_allowance) == (100_000, 1000)
    assert c.domain_token_allowance_doubling == 7 * DAY
    c = cfg(rest='[as]\nnew_domain_token_allowance = 5\ndomain_token_allowance_doubling = "1h"').as_
    assert (c.new_domain_token_allowance, c.domain_token_allowance_doubling) == (5, HOUR)
    # Starting above the full allowance is allowed: it turns the ramp off.
    c = cfg(rest="[as]\nnew_domain_token_allowance = 500\ndomain_token_allowance = 60").as_
    assert (c.new_domain_token_allowance, c.domain_token_allowance) == (500, 60)
    msg = rejects("as.new_domain_token_allowance", rest="[as]\nnew_domain_token_allowance = 0")
    assert msg == "as.new_domain_token_allowance: expected a positive integer"
    rejects("as.new_domain_token_allowance", rest='[as]\nnew_domain_token_allowance = "1000"')
    msg = rejects("as.domain_token_allowance_doubling", rest='[as]\ndomain_token_allowance_doubling = "30s"')
    assert "at least 1m" in msg
    rejects("as.domain_token_allowance_doubling", rest="[as]\ndomain_token_allowance_doubling = 1.5")


def test_federation_policy() -> None:
    open_ = cfg(rest='[federation]\nblocklist = ["evil.test"]')
    assert open_.federates_with(Fqdn("b.test"))
    assert not open_.federates_with(Fqdn("evil.test"))
    assert open_.federates_with(Fqdn("a.test"))
    closed = cfg(rest='[federation]\npolicy = "allowlist"\nallowlist = ["b.test"]')
    assert closed.federates_with(Fqdn("b.test"))
    assert not closed.federates_with(Fqdn("c.test"))
    assert closed.federates_with(Fqdn("a.test"))


def test_check_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    c = Config.default("a.test", tls_cert=cert, tls_key=key)
    with pytest.raises(ConfigError, match="^server.tls_cert: no such file"):
        c.check_files()
    cert.write_text("x")
    with pytest.raises(ConfigError, match="^server.tls_key: no such file"):
        c.check_files()
    key.write_text("x")
    c.check_files()
    with_ca = dataclasses.replace(
        c, federation=dataclasses.replace(c.federation, ca_file=tmp_path / "ca.pem")
    )
    with pytest.raises(ConfigError, match="^federation.ca_file: no such file"):
        with_ca.check_files()
