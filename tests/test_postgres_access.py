"""The tracking server's PostgreSQL: who runs it when we are root, and who may log in from where (pg_hba.conf)."""

import ipaddress
import pwd

import pytest

from training.operations import postgres
from training.operations.server_state import SUPERUSER, TrackingServerError


def first_match(rules: list[str], user: str, address: str | None, ssl: bool = True) -> str:
    """What pg_hba.conf does with a login (`address` None: the Unix socket): the method of the first matching line."""
    for rule in rules:
        kind, _database, users, *where, method = rule.split()
        if (kind == "local") != (address is None) or (kind == "hostssl" and not ssl) or users not in ("all", user):
            continue
        if address is None or where == ["all"] or ipaddress.ip_address(address) in ipaddress.ip_network(where[0]):
            return method
    return "reject"


@pytest.mark.parametrize("tls", [True, False])
def test_the_superuser_logs_in_through_the_local_socket_alone(tls):
    rules = postgres.access_rules(tls)
    assert first_match(rules, SUPERUSER, None) == "scram-sha-256"
    for address in ("127.0.0.1", "::1", "10.1.2.3", "2001:db8::1"):
        assert first_match(rules, SUPERUSER, address) == "reject", address
    assert first_match(rules, "tuner", "127.0.0.1") == "scram-sha-256"
    assert first_match(rules, "tuner", "10.1.2.3") == ("scram-sha-256" if tls else "reject")
    assert first_match(rules, "tuner", "10.1.2.3", ssl=False) == "reject"
    assert not [rule for rule in rules if rule.split()[-1] not in ("scram-sha-256", "reject")]  # passwords only


def test_as_root_postgresql_runs_as_its_own_user_and_never_as_nobody(monkeypatch):
    monkeypatch.setattr(postgres.os, "geteuid", lambda: 0)
    users = {"nobody": pwd.struct_passwd(("nobody", "x", 65534, 65534, "", "/", "/bin/false"))}

    def getpwnam(name: str) -> pwd.struct_passwd:
        return users[name]  # a KeyError, as pwd's, for a user that does not exist

    monkeypatch.setattr(postgres.pwd, "getpwnam", getpwnam)
    with pytest.raises(TrackingServerError, match="'postgres'.*useradd --system postgres") as refused:
        postgres.as_postgres_user()
    assert "never as a shared one like nobody" in str(refused.value)
    users["postgres"] = pwd.struct_passwd(("postgres", "x", 101, 104, "", "/var/lib/postgresql", "/bin/bash"))
    assert postgres.as_postgres_user() == ["runuser", "-u", "postgres", "--"]
