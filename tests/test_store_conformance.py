"""What qlite needs from an S3 server, checked on every server the suite knows (SeaweedFS and
moto server in every run, or the one QLITE_TEST_ENDPOINT names), as huey runs one storage test
mixin against every backend. The rest of the suite runs on SeaweedFS: what it checks (the
worker, the CLI, flow control) does not depend on the server once these hold.

Through ``Store``, qlite's one boundary with boto3: opaque bytes, conditional writes,
missing keys, listing in pages, user metadata, server-side copies, errors translated into
qlite's own, and presigned uploads.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

import qlite
from qlite import envelope
from qlite.errors import AlreadyExists, BucketNotFound, ObjectNotFound, StorageError
from qlite.presign import presign_put
from qlite.settings import parse_url
from qlite.store import Store


class SmallPages(Store):
    """A store that lists two keys per request, so a few keys make several pages."""

    def list_page(self, prefix, start_after=None, max_keys=2):
        return super().list_page(prefix, start_after, max_keys)


@pytest.fixture
def store(any_s3) -> Store:
    return Store(parse_url(any_s3.url), any_s3.server.endpoint)


def raw(any_s3):
    """The server's own client (admin credentials), for what Store does not do itself."""
    return any_s3.server.client()


# -- bytes in, bytes out ---------------------------------------------------------------------


def test_an_object_comes_back_byte_for_byte(store):
    body = bytes(range(256)) * 4 + "é\u2028".encode()  # not UTF-8 as a whole, not JSON
    store.put("inbox/default/a.json", body)
    assert store.get("inbox/default/a.json") == body
    assert store.stream("inbox/default/a.json").read() == body
    assert store.exists("inbox/default/a.json")


def test_an_empty_object_is_an_object(store):
    store.put("x/empty", b"")
    assert store.get("x/empty") == b"" and store.exists("x/empty")
    assert list(store.iter_keys("x/")) == [("x/empty", 0)]


# -- conditional writes ----------------------------------------------------------------------


def test_if_none_match_creates_once_and_never_overwrites(store):
    store.put("inbox/default/k.json", b"first", if_none_match=True)
    with pytest.raises(AlreadyExists, match=r"s3: put s3://.*/inbox/default/k\.json: already"):
        store.put("inbox/default/k.json", b"second", if_none_match=True)
    assert store.get("inbox/default/k.json") == b"first"
    store.put("inbox/default/k.json", b"third")  # a plain PUT overwrites
    assert store.get("inbox/default/k.json") == b"third"


def test_if_match_writes_only_over_the_version_it_names(any_s3, store):
    """qlite doctor's if-match check relies on this."""
    client, key = raw(any_s3), any_s3.prefix + "doctor/m.json"
    etag = client.put_object(Bucket=any_s3.bucket, Key=key, Body=b"v1")["ETag"]
    with pytest.raises(client.exceptions.ClientError) as refused:
        client.put_object(Bucket=any_s3.bucket, Key=key, Body=b"v2",
                          IfMatch='"00000000000000000000000000000000"')
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    client.put_object(Bucket=any_s3.bucket, Key=key, Body=b"v3", IfMatch=etag)
    assert store.get("doctor/m.json") == b"v3"


# -- missing keys ----------------------------------------------------------------------------


def test_a_missing_key_is_object_not_found_everywhere(store):
    for read in (store.get, store.get_with_metadata, store.stream):
        with pytest.raises(ObjectNotFound, match=r"s3: get s3://.*/nothing/here: no such key"):
            read("nothing/here")
    assert store.get_or_none("nothing/here") is None
    assert store.exists("nothing/here") is False
    with pytest.raises(ObjectNotFound):
        store.copy("nothing/here", "nothing/there")
    store.delete_many(["nothing/here", "nothing/there"])  # deleting what is gone is fine
    assert list(store.iter_keys("nothing/")) == []


def test_deleted_objects_are_gone(store):
    store.put("d/a", b"1")
    store.put("d/b", b"2")
    store.delete_many(["d/a", "d/b"])
    assert list(store.iter_keys("d/")) == [] and store.get_or_none("d/a") is None


# -- listing ---------------------------------------------------------------------------------


def test_listing_pages_in_key_order_from_any_start(any_s3):
    store = SmallPages(parse_url(any_s3.url), any_s3.server.endpoint)
    keys = [f"inbox/default/{i:02d}.json" for i in (3, 0, 4, 1, 2)]
    for i, key in enumerate(keys):
        store.put(key, b"x" * i)
    store.put("inbox/other/9.json", b"")  # under another prefix: not listed
    expected = sorted((k, i) for i, k in enumerate(keys))
    assert list(store.iter_keys("inbox/default/")) == expected
    assert store.requests["list"] == 3  # 2 + 2 + 1 keys: three pages
    assert list(store.iter_keys("inbox/default/", start_after=expected[1][0])) == expected[2:]
    page, truncated = store.list_page("inbox/default/", max_keys=4)
    assert (page, truncated) == (expected[:4], True)
    page, truncated = store.list_page("inbox/default/", start_after=page[-1][0])
    assert (page, truncated) == (expected[4:], False)


def test_a_listing_reads_every_key_as_the_servers_own_client_does(any_s3, store):
    """Store's LIST parses the listed objects itself (ElementTree, not botocore's parser):
    keys XML would escape or a URL would encode come back as written, with size, time, ETag."""
    names = ["a b.json", "plus+sign", "per%25cent", "amp&lt<gt>", "quote\"'", "caf\u00e9-\u65e5",
             "tab\tkey", "~tilde*!()"]
    for i, name in enumerate(names):
        store.put(f"odd/{name}", b"x" * i)
    ours = {o.key: o for o in store.objects("odd/")}
    resp = raw(any_s3).list_objects_v2(Bucket=any_s3.bucket, Prefix=any_s3.prefix + "odd/")
    theirs = {o["Key"].removeprefix(any_s3.prefix): o for o in resp["Contents"]}
    assert sorted(ours) == sorted(theirs) == sorted(f"odd/{n}" for n in names)
    for key, o in ours.items():
        assert (o.size, o.etag) == (theirs[key]["Size"], theirs[key]["ETag"])
        assert o.modified == theirs[key]["LastModified"].timestamp()
    assert store.list_page("odd/")[0] == sorted((k, o.size) for k, o in ours.items())


def test_list_dirs_names_what_is_directly_under_a_prefix(store):
    for key in ("inbox/high/1.json", "inbox/high/2.json", "inbox/low/1.json", "inbox/x.json"):
        store.put(key, b"")
    assert store.list_dirs("inbox/") == ["high", "low"]
    assert store.list_dirs("results/") == []


# -- metadata --------------------------------------------------------------------------------


def test_user_metadata_comes_back_lowercase_with_the_body(any_s3, store):
    store.put("inbox/default/m.json", b"{}", metadata={"qlite-signature": "kid=k1,v1=ab",
                                                       "Qlite-Reason": "Mixed Case value"})
    body, meta = store.get_with_metadata("inbox/default/m.json")
    assert body == b"{}"
    assert meta == {"qlite-signature": "kid=k1,v1=ab", "qlite-reason": "Mixed Case value"}
    head = raw(any_s3).head_object(Bucket=any_s3.bucket, Key=any_s3.prefix + "inbox/default/m.json")
    assert head["ContentType"] == "application/json"


def test_a_copy_keeps_the_metadata_or_replaces_it_when_told(store):
    store.put("a/src", b"body", metadata={"qlite-signature": "s"})
    store.copy("a/src", "a/kept")
    store.copy("a/src", "a/replaced", metadata={"qlite-reason": "why"})
    assert store.get_with_metadata("a/kept") == (b"body", {"qlite-signature": "s"})
    assert store.get_with_metadata("a/replaced") == (b"body", {"qlite-reason": "why"})


# -- errors ----------------------------------------------------------------------------------


def test_a_missing_bucket_is_named_with_how_to_create_it(any_s3):
    store = Store(parse_url("s3://qlite-no-such-bucket/q"), any_s3.server.endpoint)
    for call in (lambda: store.put("k", b"x"), lambda: store.get("k"),
                 lambda: list(store.iter_keys("")), store.check):
        with pytest.raises(BucketNotFound) as e:
            call()
        assert "bucket 'qlite-no-such-bucket' does not exist" in str(e.value)
        assert "Try: create it (aws s3 mb s3://qlite-no-such-bucket)" in str(e.value)


def test_other_refusals_keep_the_operation_the_key_and_the_servers_reason(store):
    store.put("a/src", b"x")
    with pytest.raises(StorageError) as e:
        store.copy("a/src", "a/src")  # onto itself, metadata unchanged: S3 refuses it
    assert type(e.value) is StorageError
    assert str(e.value).startswith("s3: copy s3://") and "/a/src: InvalidRequest: " in str(e.value)


# -- presigned uploads -----------------------------------------------------------------------


def upload(signed: dict, body: bytes, headers: dict | None = None) -> int:
    request = urllib.request.Request(signed["url"], data=body, method="PUT",
                                     headers=signed["headers"] if headers is None else headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_a_presigned_put_creates_its_one_job_and_cannot_overwrite_it(any_s3):
    signed = presign_put(queue="default", expires=600)
    body = envelope.encode(envelope.make("math.add", [2, 3], job_id=signed["id"]))
    assert upload(signed, body) == 200
    assert qlite.Client().status(signed["id"])["state"] == "pending"
    assert upload(signed, b"{}") == 412  # not even the holder of the URL may replace it
    assert qlite.Client().store.get(signed["key"]) == body
