"""The Redis ACL users (deploy/redis/users.acl) and the credentials that stay hidden."""

from __future__ import annotations

import json

from kombu.utils.json import dumps

from {{ cookiecutter.package_name }}.queues import DEAD_QUEUE, QUEUE_NAMES
from {{ cookiecutter.package_name }}.redis_credentials import HiddenCredentials
from {{ cookiecutter.package_name }}.settings import Settings
from tests.harness.redis import acl_rules

PUBLISHERS = ("api", "worker", "beat")
# The dashboards' users: read-only on the task queues (`%R~` patterns).
MONITORS = tuple(user for user, rules in acl_rules("redis").items() if "%R~" in rules)


def test_every_task_queue_is_in_the_key_patterns_of_publishers_and_monitors() -> None:
    rules = acl_rules("redis")
    for queue in (*QUEUE_NAMES, DEAD_QUEUE):
        for user in PUBLISHERS:
            assert f"~{queue}*" in rules[user].split(), (user, queue)
        for user in MONITORS:
            assert f"%R~{queue}*" in rules[user].split(), (user, queue)


def test_no_application_user_gets_dangerous_commands_or_every_key() -> None:
    rules = acl_rules("redis")
    for user in (*PUBLISHERS, *MONITORS):
        words = rules[user].split()
        assert "-@dangerous" in words, user
        assert not {"+@all", "~*", "allkeys"} & set(words), user


def test_sentinel_clients_may_only_look_the_master_up() -> None:
    words = acl_rules("sentinel")["client"].split()
    assert all(not word.startswith("+@") for word in words), words
    assert "+sentinel|get-master-addr-by-name" in words
    forbidden = {"+sentinel", "+config", "+acl", "+sentinel|config", "+sentinel|debug"}
    forbidden |= {f"+sentinel|{sub}" for sub in ("failover", "set", "remove", "reset", "monitor")}
    assert not forbidden & set(words), words


def test_hidden_credentials_authenticate_but_never_serialise_the_password() -> None:
    credentials = HiddenCredentials("worker", "s3cret-pw")
    assert credentials.get_credentials() == ("worker", "s3cret-pw")
    assert "s3cret-pw" not in repr(credentials)
    assert "s3cret-pw" not in dumps({"sentinel_kwargs": {"credential_provider": credentials}})
    assert json.loads(dumps({"c": credentials}))["c"] == repr(credentials)


def test_the_url_carries_the_component_user() -> None:
    settings = Settings(
        redis_mode="standalone",
        redis_address="r:6379",
        redis_username="api",
        redis_password="p@ss",
    )
    assert settings.broker_url.startswith("redis://api:p%40ss@r:6379/")
