"""The front's edge in the configuration: WALLET_RATE_LIMITS, WALLET_TRUSTED_PROXIES and
WALLET_IDEMPOTENCY_RETENTION_S parse into typed fields, and a bad value is a start-up error that names the
variable and the bad entry."""

from __future__ import annotations

import pytest

from core.config import RATE_LIMIT_NAMES, Config
from core.limits import IDEMPOTENCY_RETENTION_S_DEFAULT
from core.errors import ConfigError


def test_defaults():
    config = Config.from_env({})
    assert config.rate_limits == ()
    assert config.trusted_proxies == 0
    assert config.idempotency_retention_s == IDEMPOTENCY_RETENTION_S_DEFAULT == 86_400


def test_rate_limits_parse_into_typed_tuples():
    config = Config.from_env({"WALLET_RATE_LIMITS": " register:ip:1000/900 , login:account:3/60,"})
    assert config.rate_limits == (("register:ip", 1000, 900), ("login:account", 3, 60))


def test_every_limit_name_can_be_overridden():
    raw = ",".join(f"{name}:7/30" for name in RATE_LIMIT_NAMES)
    assert Config.from_env({"WALLET_RATE_LIMITS": raw}).rate_limits == tuple(
        (name, 7, 30) for name in RATE_LIMIT_NAMES)


@pytest.mark.parametrize("entry, says", [
    ("register:ip:1000", "must be name:count/seconds"),
    ("register:ip:1000/", "must be name:count/seconds"),
    ("register:ip:-1/900", "must be name:count/seconds"),
    ("register:ip:ten/900", "must be name:count/seconds"),
    ("register:ip:1.5/900", "must be name:count/seconds"),
    ("1000/900", "must be name:count/seconds"),
    ("register:ip:" + "9" * 13 + "/900", "must be name:count/seconds"),
    ("signup:ip:10/900", "unknown limit 'signup:ip'"),
    ("login:10/900", "unknown limit 'login'"),
    ("register:ip:0/900", "count must be"),
    ("register:ip:10/0", "seconds must be"),
    ("register:ip:10/99999999", "seconds must be"),
])
def test_a_bad_rate_limit_entry_is_a_config_error_naming_it(entry, says):
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"WALLET_RATE_LIMITS": f"login:ip:50/900,{entry}"})
    message = str(refused.value)
    assert "WALLET_RATE_LIMITS" in message and repr(entry) in message and says in message


def test_a_repeated_rate_limit_is_refused():
    with pytest.raises(ConfigError, match="WALLET_RATE_LIMITS .*repeats the limit 'pay:ip'"):
        Config.from_env({"WALLET_RATE_LIMITS": "pay:ip:5/60,pay:ip:6/60"})


def test_trusted_proxies():
    assert Config.from_env({"WALLET_TRUSTED_PROXIES": "0"}).trusted_proxies == 0
    assert Config.from_env({"WALLET_TRUSTED_PROXIES": "2"}).trusted_proxies == 2
    for bad in ("-1", "one", "1.0"):
        with pytest.raises(ConfigError, match=f"WALLET_TRUSTED_PROXIES must be .*{bad}"):
            Config.from_env({"WALLET_TRUSTED_PROXIES": bad})


def test_idempotency_retention():
    assert Config.from_env({"WALLET_IDEMPOTENCY_RETENTION_S": "3600"}).idempotency_retention_s == 3600
    for bad in ("0", "-5", "1h"):
        with pytest.raises(ConfigError, match=f"WALLET_IDEMPOTENCY_RETENTION_S must be .*{bad}"):
            Config.from_env({"WALLET_IDEMPOTENCY_RETENTION_S": bad})


def test_etcd_membership_settings():
    config = Config.from_env({"WALLET_ETCD_URL": "http://127.0.0.1:23790/", "WALLET_ETCD_PREFIX": "prod",
                              "WALLET_ETCD_LEASE_S": "5"})
    assert (config.etcd_url, config.etcd_prefix, config.etcd_lease_s) == ("http://127.0.0.1:23790", "prod", 5)
    assert Config.from_env({}).etcd_url is None  # no etcd: static --shards


@pytest.mark.parametrize("env", [{"WALLET_ETCD_URL": "127.0.0.1:2379"}, {"WALLET_ETCD_URL": "ftp://h:1"},
                                 {"WALLET_ETCD_URL": "http://h:99999"}, {"WALLET_ETCD_URL": "http://h:1/v3"},
                                 {"WALLET_ETCD_LEASE_S": "1"}, {"WALLET_ETCD_LEASE_S": "301"},
                                 {"WALLET_ETCD_LEASE_S": "ten"}])
def test_a_bad_etcd_setting_is_a_config_error(env):
    with pytest.raises(ConfigError, match="WALLET_ETCD"):
        Config.from_env(env)
