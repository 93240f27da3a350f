"""Object storage: put/get/list/delete of bytes under the queue's prefix, conditional writes.

The only module that speaks to boto3. botocore errors are translated here, at the boundary,
into qlite's own (``s3: get KEY: cause``) so nothing above sees a ClientError. Keys passed in
and out are relative to the queue's prefix.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple
from xml.etree import ElementTree

from qlite.errors import (
    AccessDenied,
    AlreadyExists,
    BucketNotFound,
    EndpointUnreachable,
    ObjectNotFound,
    StorageError,
)
from qlite.settings import QueueURL

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
           "ExpiredToken", "AllAccessDisabled", "InvalidSecurity", "403"}


class ObjectInfo(NamedTuple):
    """What a LIST or HEAD says about one object (``key`` relative to the prefix)."""

    key: str
    size: int
    modified: float  # Unix seconds
    etag: str = ""


class Credentials(NamedTuple):
    """Which credentials boto3 found: the access key id (not the secret) and where from."""

    access_key: str
    source: str  # botocore's name for it: "env", "shared-credentials-file", "iam-role", ...


class Store:
    """One bucket + prefix. Thread-safe (boto3 clients are)."""

    def __init__(self, url: QueueURL, endpoint_url: str | None = None, client: Any = None):
        self.url = url
        self.bucket = url.bucket
        self.prefix = url.prefix
        self.endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        self._client = client
        self._signer: Any = None
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # S3 requests by operation, for stats and bench

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = _make_client(self.endpoint_url)
        return self._client

    def where(self) -> str:
        return self.endpoint_url or "AWS S3"

    # -- operations -------------------------------------------------------------------------

    def put(self, key: str, body: bytes, *, if_none_match: bool = False,
            if_match: str | None = None, metadata: dict | None = None) -> None:
        """PUT ``key``; with ``if_none_match`` it never overwrites, with ``if_match`` (an ETag)
        it replaces only that version: AlreadyExists when the condition fails."""
        extra: dict[str, Any] = {"ContentType": "application/json"}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        if metadata:
            extra["Metadata"] = metadata
        self._call("put", key, "put_object", Key=self.prefix + key, Body=body, **extra)

    def get(self, key: str) -> bytes:
        return self.get_with_metadata(key)[0]

    def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]]:
        """The object's bytes and its user metadata (``x-amz-meta-NAME`` as ``NAME``,
        lowercase), from the same GET."""
        resp = self._call("get", key, "get_object", Key=self.prefix + key)
        try:
            body = resp["Body"].read()
        except Exception as e:  # a connection dropped mid-body
            raise StorageError(f"s3: get {self._name(key)}: reading body: {e}") from e
        return body, {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()}

    def get_or_none(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except ObjectNotFound:
            return None

    def stream(self, key: str) -> Any:
        """The object's body as a file-like stream (``.read(n)``), not read into memory."""
        return self._call("get", key, "get_object", Key=self.prefix + key)["Body"]

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
            return True
        except ObjectNotFound:
            return False

    def head(self, key: str) -> ObjectInfo:
        """One HEAD: the object's size, modification time and ETag (ObjectNotFound if none)."""
        resp = self._call("head", key, "head_object", Key=self.prefix + key)
        return ObjectInfo(key, int(resp.get("ContentLength") or 0),
                          _seconds(resp.get("LastModified")), resp.get("ETag") or "")

    def iter_keys(self, prefix: str,
                  start_after: str | None = None) -> Iterator[tuple[str, int]]:
        """(relative key, size) under ``prefix``, in key order, one LIST per 1,000 keys."""
        while True:
            page, truncated = self.list_page(prefix, start_after)
            yield from page
            if not truncated or not page:
                return
            start_after = page[-1][0]

    def list_page(self, prefix: str, start_after: str | None = None,
                  max_keys: int = 1000) -> tuple[list[tuple[str, int]], bool]:
        """One LIST: up to ``max_keys`` (relative key, size) after ``start_after``."""
        kwargs: dict[str, Any] = {"Prefix": self.prefix + prefix, "MaxKeys": max_keys}
        if start_after:
            kwargs["StartAfter"] = self.prefix + start_after
        resp = self._call("list", prefix, "list_objects_v2", **kwargs)
        n = len(self.prefix)
        page = [(item["Key"][n:], item["Size"]) for item in resp.get("Contents", ())]
        return page, bool(resp.get("IsTruncated"))

    def objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` with its size, modification time and ETag, in key
        order, one LIST per 1,000 keys."""
        start_after: str | None = None
        n = len(self.prefix)
        while True:
            kwargs: dict[str, Any] = {"Prefix": self.prefix + prefix, "MaxKeys": 1000}
            if start_after:
                kwargs["StartAfter"] = self.prefix + start_after
            resp = self._call("list", prefix, "list_objects_v2", **kwargs)
            page = [ObjectInfo(item["Key"][n:], item["Size"], _seconds(item.get("LastModified")),
                               item.get("ETag") or "") for item in resp.get("Contents", ())]
            yield from page
            if not resp.get("IsTruncated") or not page:
                return
            start_after = page[-1].key

    def list_dirs(self, prefix: str) -> list[str]:
        """The 'directories' directly under ``prefix`` (names without slashes)."""
        resp = self._call("list", prefix, "list_objects_v2", Prefix=self.prefix + prefix,
                          Delimiter="/", MaxKeys=1000)
        n = len(self.prefix + prefix)
        return [p["Prefix"][n:].rstrip("/") for p in resp.get("CommonPrefixes", ())]

    def delete_many(self, keys: list[str]) -> None:
        """Delete keys, up to 1,000 per request; a missing key is not an error."""
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            resp = self._call("delete", chunk[0], "delete_objects", Delete={
                "Objects": [{"Key": self.prefix + k} for k in chunk], "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                e = errors[0]
                raise StorageError(
                    f"s3: delete {e.get('Key')}: {e.get('Code')}: {e.get('Message')} "
                    f"({len(errors)} of {len(chunk)} keys failed)"
                )

    def copy(self, src: str, dst: str, metadata: dict | None = None) -> None:
        """Server-side copy (no download), replacing metadata when given."""
        extra: dict[str, Any] = {}
        if metadata is not None:
            extra = {"Metadata": metadata, "MetadataDirective": "REPLACE"}
        self._call("copy", src, "copy_object", Key=self.prefix + dst,
                   CopySource={"Bucket": self.bucket, "Key": self.prefix + src}, **extra)

    def upload(self, key: str, fileobj: Any, *, content_type: str, chunk: int,
               concurrency: int) -> None:
        """Stream a file-like object to ``key`` with boto3's managed (multipart) transfer:
        at most about ``chunk`` x ``concurrency`` bytes are held at once."""
        from boto3.s3.transfer import TransferConfig

        # Small queues: a non-seekable stream is read ahead as far as the queues allow, and
        # s3transfer's defaults (1,000 requests) would buffer most of a large body.
        config = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                                max_concurrency=concurrency, max_io_queue=concurrency)
        config.max_request_queue_size = concurrency  # s3transfer's names; boto3 has no alias
        config.max_submission_queue_size = concurrency
        self._call("upload", key, "upload_fileobj", Fileobj=fileobj, Key=self.prefix + key,
                   ExtraArgs={"ContentType": content_type}, Config=config)

    def copy_managed(self, src_bucket: str, src: str, dst_bucket: str, dst: str, *,
                     chunk: int, concurrency: int) -> int:
        """Server-side copy of any size (multipart past ``chunk``); returns the size. Keys
        are relative to the prefix in this bucket, absolute in another."""
        from boto3.s3.transfer import TransferConfig

        src_key = self.prefix + src if src_bucket == self.bucket else src
        dst_key = self.prefix + dst if dst_bucket == self.bucket else dst
        head = self._call("head", src, "head_object", Key=src_key) \
            if src_bucket == self.bucket else self.client.head_object(Bucket=src_bucket,
                                                                      Key=src_key)
        config = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                                max_concurrency=concurrency)
        self.requests["copy"] += 1
        try:
            self.client.copy({"Bucket": src_bucket, "Key": src_key}, dst_bucket, dst_key,
                             Config=config)
        except Exception as e:
            raise StorageError(f"s3: copy s3://{src_bucket}/{src_key} to "
                               f"s3://{dst_bucket}/{dst_key}: {e}") from e
        return int(head["ContentLength"])

    # -- conditional writes, for the fleet's lease objects (worker/fleet.py) ------------------

    def put_cas(self, key: str, body: bytes, etag: str | None) -> str | None:
        """PUT ``key`` only if it is unchanged since ``etag`` was read (``None``: only if it
        does not exist). Returns the new ETag, or None when the condition failed (412: someone
        else wrote first). S3 compares the ETag itself, so no clock is trusted."""
        cond = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            resp = self._call("put", key, "put_object", Key=self.prefix + key, Body=body,
                              ContentType="application/json", **cond)
        except AlreadyExists:
            return None
        except ObjectNotFound:  # If-Match on a key deleted meanwhile
            return None
        return resp.get("ETag")

    def get_etag(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag from one GET, or None when it does not exist."""
        try:
            resp = self._call("get", key, "get_object", Key=self.prefix + key)
            return resp["Body"].read(), resp.get("ETag", "")
        except ObjectNotFound:
            return None

    def get_if_changed(self, key: str, etag: str) -> tuple[bytes, str] | None:
        """One conditional GET (If-None-Match ``etag``): None when the object is unchanged
        (304, priced as a GET: the doorbell's poll), else its bytes and new ETag.
        ObjectNotFound when it is gone."""
        try:
            resp = self._call("get", key, "get_object", Key=self.prefix + key, IfNoneMatch=etag)
        except StorageError as e:
            if getattr(e, "code", None) in ("304", "NotModified"):
                return None
            raise
        return resp["Body"].read(), resp.get("ETag", "")

    def list_etags(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` with its ETag (one LIST per 1,000 keys)."""
        out: dict[str, str] = {}
        start: str | None = None
        n = len(self.prefix)
        while True:
            kwargs: dict[str, Any] = {"Prefix": self.prefix + prefix, "MaxKeys": 1000}
            if start:
                kwargs["StartAfter"] = start
            resp = self._call("list", prefix, "list_objects_v2", **kwargs)
            items = resp.get("Contents", ())
            out.update({item["Key"][n:]: item.get("ETag", "") for item in items})
            if not resp.get("IsTruncated") or not items:
                return out
            start = items[-1]["Key"]

    def delete(self, key: str) -> None:
        """Delete one key; a missing key is not an error."""
        self._call("delete", key, "delete_object", Key=self.prefix + key)

    def check(self) -> float | None:
        """Fail fast with a clear error when the endpoint, bucket or credentials are wrong.
        Returns the server's clock from the response's ``Date`` header (Unix seconds, to
        the second), or None when it sent none."""
        resp = self._call("list", "", "list_objects_v2", Prefix=self.prefix, MaxKeys=1)
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            return parsedate_to_datetime(date).timestamp() if date else None
        except (TypeError, ValueError):
            return None

    def credentials(self) -> Credentials | None:
        """The credentials requests would be signed with, or None when there are none. Asks
        nothing of the server: whether it accepts them is what ``check`` tells."""
        import boto3

        creds = boto3.session.Session().get_credentials()
        if creds is None:
            return None
        return Credentials(creds.access_key or "", creds.method or "")

    # -- presigned requests (signed here, sent later by someone without credentials) -------

    def presign_put(self, key: str, *, expires: int, content_type: str = "application/json",
                    if_none_match: bool = True) -> str:
        """A URL that PUTs ``key`` once within ``expires`` seconds. ``Content-Type`` and, with
        ``if_none_match``, ``If-None-Match: *`` are signed in: the uploader must send them,
        and the server then refuses to overwrite."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + key,
                                  "ContentType": content_type}
        if if_none_match:
            params["IfNoneMatch"] = "*"
        with self._translated("presign", key):
            return self.signer.generate_presigned_url("put_object", ExpiresIn=expires,
                                                      HttpMethod="PUT", Params=params)

    def presign_post(self, prefix: str, *, expires: int, max_bytes: int,
                     content_type: str = "application/json") -> dict:
        """An HTML-form POST policy for any key under ``prefix`` of at most ``max_bytes``:
        ``{"url", "fields", "key_prefix"}``. The form sends every field, ``key`` (starting
        with ``key_prefix``, the full key in the bucket) and the file last."""
        full = self.prefix + prefix
        with self._translated("presign", prefix):
            post = self.signer.generate_presigned_post(
                self.bucket, full + "${filename}", ExpiresIn=expires,
                Fields={"Content-Type": content_type},
                Conditions=[["starts-with", "$key", full],
                            ["content-length-range", 1, max_bytes],
                            {"Content-Type": content_type}])
        fields = {k: v for k, v in post["fields"].items() if k != "key"}
        return {"url": post["url"], "fields": fields, "key_prefix": full}

    @property
    def signer(self) -> Any:
        """A client like ``client``, told to sign with SigV4: unless a client is told so
        explicitly, boto3 presigns S3 requests with SigV2, which leaves If-None-Match out of
        the signature (the URL could then overwrite a job)."""
        if self._signer is None:
            import boto3
            from botocore.config import Config

            client = self.client
            region = (os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
                      or client.meta.region_name or "us-east-1")
            # On AWS, the bucket's regional endpoint: the global one may answer a fresh bucket
            # with a redirect, which an uploader's PUT does not follow.
            endpoint = self.endpoint_url or f"https://s3.{region}.amazonaws.com"
            config = Config(signature_version="s3v4") if self.endpoint_url else \
                Config(signature_version="s3v4", s3={"addressing_style": "virtual"})
            self._signer = boto3.session.Session().client(
                "s3", config=client.meta.config.merge(config), endpoint_url=endpoint,
                region_name=region)
        return self._signer

    # -- plumbing ---------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _call(self, op: str, key: str, method: str, **kwargs: Any) -> Any:
        self.requests[op] += 1
        with self._translated(op, key):
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)

    @contextmanager
    def _translated(self, op: str, key: str) -> Iterator[None]:
        """botocore's errors raised inside become qlite's, naming the operation and key."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            NoCredentialsError,
        )

        try:
            yield
        except ClientError as e:
            error = self._translate(op, key, e)
            if isinstance(error, AccessDenied) and self._no_bucket():
                error = self._translate(op, key, e, code="NoSuchBucket")
            raise error from e
        except NoCredentialsError as e:
            raise AccessDenied(
                "s3: no AWS credentials found. Try: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            ) from e
        except ConnectionError as e:  # EndpointConnectionError, timeouts, dropped connections
            raise EndpointUnreachable(
                f"s3: {op} {self._name(key)}: cannot reach {self.where()}: {e}. "
                "Try: check AWS_ENDPOINT_URL_S3 and that the server is running"
            ) from e
        except BotoCoreError as e:
            raise StorageError(f"s3: {op} {self._name(key)}: {e}") from e

    def _no_bucket(self) -> bool:
        """Some servers answer a write to a missing bucket with AccessDenied (SeaweedFS tries
        to create it): one HEAD tells the two apart when we may ask."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            return str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket")
        except BotoCoreError:
            return False
        return False

    def _translate(self, op: str, key: str, e: Any, code: str | None = None) -> StorageError:
        err = e.response.get("Error", {})
        code = code or str(err.get("Code")
                           or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        message = (err.get("Message") or code).rstrip(".")
        error: StorageError
        if code in ("NoSuchKey", "404", "NotFound"):
            error = ObjectNotFound(f"s3: {op} {self._name(key)}: no such key")
        elif code == "NoSuchBucket":
            error = BucketNotFound(
                f"s3: bucket {self.bucket!r} does not exist at {self.where()}. "
                f"Try: create it (aws s3 mb s3://{self.bucket}) or fix QLITE_URL"
            )
        elif code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            error = AlreadyExists(f"s3: {op} {self._name(key)}: already exists")
        elif code in _DENIED:
            error = AccessDenied(
                f"s3: {op} {self._name(key)}: {code}: {message}. "
                "Try: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
            )
        else:
            error = StorageError(f"s3: {op} {self._name(key)}: {code}: {message}")
        error.code = code
        return error


def _seconds(when: Any) -> float:
    """botocore's LastModified (a datetime) as Unix seconds; 0 when absent."""
    return when.timestamp() if when is not None else 0.0


def _timestamp(value: str) -> datetime:
    """botocore's timestamp parser, fast for the forms S3 sends (ISO 8601 in XML bodies, RFC
    1123 in headers); anything else goes to botocore's own."""
    try:
        if value.endswith("Z"):
            return datetime.fromisoformat(value)
        if value.endswith("GMT"):
            return parsedate_to_datetime(value)
    except (ValueError, TypeError):
        pass
    from botocore.utils import parse_timestamp

    return parse_timestamp(value)


_CONTENTS: dict[str, Callable[[str], Any]] = {
    "Key": str, "Size": int, "LastModified": _timestamp, "ETag": str, "StorageClass": str}


def _fast_list(response_dict: dict, customized_response_dict: dict, **_: Any) -> None:
    """botocore's before-parse hook for ListObjectsV2: the listed objects (``Contents``) parsed
    with ElementTree, which is C, instead of botocore's generic parser (about 30 ms of a busy
    worker's loop per 1,000 keys). The rest of the body, now without them, is left to botocore,
    whose after-call handler still URL-decodes the keys."""
    body = response_dict.get("body")
    if response_dict.get("status_code") != 200 or not isinstance(body, bytes) \
            or b"<Contents>" not in body:
        return
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return  # botocore's parser reports it
    ns = root.tag[: -len("ListBucketResult")]
    if root.tag != ns + "ListBucketResult":
        return
    contents = []
    for node in root.findall(ns + "Contents"):
        item = {}
        for child in node:
            field = child.tag[len(ns):]
            convert = _CONTENTS.get(field)
            if convert is not None and child.text is not None:
                item[field] = convert(child.text)
        contents.append(item)
        root.remove(node)
    customized_response_dict["Contents"] = contents
    response_dict["body"] = ElementTree.tostring(root)


_loader: Any = None  # botocore's data loader, shared by the clients of this process
_loader_lock = threading.Lock()


def _make_client(endpoint_url: str | None, **credentials: str) -> Any:
    """A boto3 S3 client; ``credentials`` (aws_access_key_id=...) override the environment's."""
    import botocore.session
    from boto3.s3.inject import inject_s3_transfer_methods
    from botocore.config import Config

    global _loader

    options: dict[str, Any] = {
        "connect_timeout": 3,
        "read_timeout": 30,
        "retries": {"mode": "standard", "max_attempts": 4},
        "max_pool_connections": 32,
    }
    kwargs: dict[str, Any] = {}
    if endpoint_url:
        # S3-compatible servers: path-style addressing, and no checksum headers they may reject.
        options.update(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        kwargs["endpoint_url"] = endpoint_url
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not credentials.get("region_name") and not region:
            kwargs["region_name"] = "us-east-1"
    # A fresh session reads the environment's credentials and region as they are now; sharing
    # the loader spares it parsing botocore's endpoint and S3 model files again (about 0.3 s
    # of JSON per client, paid by every Client and Worker a process makes).
    session = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:
            _loader = session.get_component("data_loader")
    session.register_component("data_loader", _loader)
    # botocore parses every LastModified of a LIST with dateutil: 15% of a busy worker's time.
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=_timestamp)
    # What a boto3 session adds to its S3 clients: upload_fileobj, copy (managed transfers).
    session.register("creating-client-class.s3", inject_s3_transfer_methods)
    client = session.create_client("s3", config=Config(**options), **{**kwargs, **credentials})
    client.meta.events.register("before-parse.s3.ListObjectsV2", _fast_list)
    return client
