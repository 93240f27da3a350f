"""The Store methods that keep boto3 inside store.py: HEAD and LIST with times and ETags,
If-Match writes, the server's clock, credentials, and presigning; errors stay qlite's."""

import time

import pytest

from qlite.errors import AlreadyExists, ObjectNotFound, StorageError
from qlite.settings import parse_url
from qlite.store import Store


def store_for(s3) -> Store:
    return Store(parse_url(s3.url), s3.env["AWS_ENDPOINT_URL_S3"])


def test_head_and_objects_give_size_time_and_etag(s3):
    store = store_for(s3)
    before = time.time() - 60
    for name in ("a", "b", "c"):
        store.put(f"box/{name}.json", b"{}" * (1 + ord(name) - ord("a")))
    info = store.head("box/b.json")
    assert (info.key, info.size) == ("box/b.json", 4)
    assert info.etag and before < info.modified < time.time() + 60
    listed = list(store.objects("box/"))
    assert [(o.key, o.size) for o in listed] == [("box/a.json", 2), ("box/b.json", 4),
                                                 ("box/c.json", 6)]
    assert listed[1].etag == info.etag
    with pytest.raises(ObjectNotFound, match="box/none.json"):
        store.head("box/none.json")


def test_a_put_with_if_match_replaces_only_the_version_named(s3):
    store = store_for(s3)
    store.put("lease.json", b'{"v": 1}')
    with pytest.raises(AlreadyExists, match="lease.json"):
        store.put("lease.json", b'{"v": 2}', if_match='"00000000000000000000000000000000"')
    store.put("lease.json", b'{"v": 2}', if_match=store.head("lease.json").etag)
    assert store.get("lease.json") == b'{"v": 2}'


def test_check_returns_the_servers_clock_and_credentials_name_their_key(s3):
    store = store_for(s3)
    server = store.check()
    assert server is not None and abs(server - time.time()) < 60
    creds = store.credentials()
    assert creds is not None and creds.access_key == s3.env["AWS_ACCESS_KEY_ID"]


def test_translated_errors_carry_the_servers_code(s3):
    store = Store(parse_url("s3://qlite-no-such-bucket/q/"), s3.env["AWS_ENDPOINT_URL_S3"])
    with pytest.raises(StorageError) as e:
        store.get("x.json")
    assert e.value.code in ("NoSuchBucket", "AccessDenied", "404"), e.value.code
    assert "Try:" in str(e.value) or "no such key" in str(e.value)
