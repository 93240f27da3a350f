"""One settings table drives env vars, CLI options and docs/settings.md."""

import re
from pathlib import Path

import pytest
import typer.main

from qlite.cli.main import app
from qlite.errors import ConfigError
from qlite.settings import SETTINGS, Settings, parse_url

DOCS = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def test_every_setting_is_documented_in_one_table_and_nothing_else_is():
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    documented = {re.findall(r"`([^`]+)`", row)[1]: row for row in rows}
    assert set(documented) == {s.env for s in SETTINGS}
    for s in SETTINGS:
        assert f"`{s.option}`" in documented[s.env], s.name


def test_every_setting_is_a_cli_option():
    command = typer.main.get_command(app)
    options = {opt for sub in command.commands.values() for p in sub.params
               for opt in p.opts if opt.startswith("--")}
    assert {s.option for s in SETTINGS} <= options


def test_url_parses_bucket_and_prefix():
    assert parse_url("s3://my-bucket").prefix == ""
    url = parse_url("s3://my-bucket/a/b/")
    assert (url.bucket, url.prefix, str(url)) == ("my-bucket", "a/b/", "s3://my-bucket/a/b")


@pytest.mark.parametrize("value, message", [
    (None, "QLITE_URL is not set"),
    ("bucket-only", "expected s3://bucket"),
    ("http://bucket/x", "expected s3://bucket"),
    ("s3://UPPER", "expected s3://bucket"),
])
def test_bad_urls_name_the_value_and_the_fix(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_url(value)


@pytest.mark.parametrize("env, message", [
    ({"QLITE_CONCURRENCY": "many"}, "QLITE_CONCURRENCY: expected a positive integer"),
    ({"QLITE_LEASE": "-5"}, "QLITE_LEASE: expected a positive number"),
    ({"QLITE_QUEUES": "ok,bad/name"}, "queue name 'bad/name' is not valid"),
    ({"QLITE_QUEUES": "high=0,low"}, "queue weight in 'high=0' is not a whole number"),
    ({"QLITE_QUEUES": "high,high"}, "a queue is named twice"),
    ({"QLITE_LOG_LEVEL": "LOUD"}, "QLITE_LOG_LEVEL: expected DEBUG"),
    ({"AWS_ENDPOINT_URL_S3": "localhost:9000"}, "endpoint URL: expected http"),
])
def test_bad_settings_name_the_variable_and_what_was_expected(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.load(env=env)


def test_options_override_the_environment():
    s = Settings.load(env={"QLITE_CONCURRENCY": "2", "QLITE_QUEUES": "a,b"}, concurrency=8)
    assert (s.concurrency, s.queues) == (8, ("a", "b"))


def test_queue_weights_switch_to_weighted_order():
    assert Settings.load(env={"QLITE_QUEUES": "high,low"}).weights == ()
    s = Settings.load(env={"QLITE_QUEUES": "high=3,low"})
    assert (s.queues, s.weights) == (("high", "low"), (3, 1))
