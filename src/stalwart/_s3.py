"""``S3Store``: the state-store seam on S3 (or any S3 API: MinIO, R2...), through s3fs.

Imported only for an ``s3://bucket/prefix`` root. The endpoint and credentials come from the
standard AWS variables and files (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``...), read by botocore.

Every write is one ``PutObject`` (or, for a big file, a multipart upload that S3 publishes only
when it is completed): a reader sees the old object or the new one, never a part. Nothing is
ever written through ``fs.open(path, "wb")``, whose ``__exit__`` publishes what was written so
far even when the block raised. A multipart upload left by a killed writer is invisible and
harmless; ``abort_uploads`` removes those of a run when its next holder starts.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import secrets
from typing import TYPE_CHECKING, Any

from ._errors import UsageError
from ._store import ObjectInfo

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["S3Store", "check_conditional_writes"]

log = logging.getLogger("stalwart.s3")

_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
_checked: set[str] = set()  # buckets whose conditional writes were probed by this process


def _filesystem() -> Any:
    try:
        import s3fs  # noqa: PLC0415 - heavy (aiobotocore); only for an s3:// root
    except ImportError:
        raise UsageError("an s3:// state root needs s3fs: pip install 'stalwart[s3]'") from None
    # A fresh instance per store: fsspec's instance cache would share one across fork().
    return s3fs.S3FileSystem(skip_instance_cache=True)


def _server_time(response: dict[str, Any]) -> float:
    """The store's clock from a response's ``Date`` header (1 s resolution)."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    date = headers.get("date")
    if not date:
        raise OSError("the object store sent no Date header: cannot judge lease expiry")
    return email.utils.parsedate_to_datetime(date).timestamp()


class S3Store:
    """A ``StateStore`` on ``s3://bucket/prefix`` (see the module docstring)."""

    def __init__(self, root: str) -> None:
        bucket, _, prefix = root[len("s3://") :].partition("/")
        if not bucket:
            raise UsageError(f"the state root {root} names no bucket: use s3://bucket/prefix")
        self.root = root.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._fs = _filesystem()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._fs.call_s3(method, Bucket=self.bucket, **kwargs)
        return result

    def read(self, key: str) -> bytes | None:
        found = self._get(key)
        return None if found is None else found[0]

    def write(self, key: str, data: bytes) -> None:
        self._call("put_object", Key=self._key(key), Body=bytes(data))

    def upload(self, key: str, path: str) -> None:
        # s3fs puts a small file in one PutObject, a big one as a multipart upload that is
        # completed only after every part was sent (aborted on error; if we die, the
        # incomplete upload stays invisible until abort_uploads removes it).
        self._fs.put_file(path, f"{self.bucket}/{self._key(key)}")

    def create(self, key: str, data: bytes) -> ObjectInfo | None:
        try:
            response = self._call(
                "put_object", Key=self._key(key), Body=bytes(data), IfNoneMatch="*"
            )
        except FileExistsError:  # 412 Precondition Failed: the object exists
            return None
        now = _server_time(response)
        return ObjectInfo(len(data), now, now)

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(self.list_sizes(prefix))

    def _listing_pages(self, full: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every page of ``list_objects_v2`` under the bucket key ``full`` (1,000 a page)."""
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call("list_objects_v2", Prefix=full, **kwargs, **extra)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def list_sizes(self, prefix: str) -> dict[str, int]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return {
            item["Key"][strip:]: int(item["Size"])
            for page in self._listing_pages(self._key(prefix))
            for item in page.get("Contents", [])
        }

    def newest_write(self, prefix: str) -> float | None:
        """When the newest object under ``prefix`` was last written (``LastModified``, from a
        listing of the prefix: a request per 1,000 objects); None if there is none."""
        written = [
            item["LastModified"].timestamp()
            for page in self._listing_pages(self._key(prefix))
            for item in page.get("Contents", [])
        ]
        return max(written, default=None)

    def list_directory(self, prefix: str) -> tuple[dict[str, int], bool]:
        """The objects right under ``prefix`` (not below a further ``/``) with their sizes,
        from one request (at most 1,000 objects), and whether that was all of them."""
        strip = len(self.prefix) + 1 if self.prefix else 0
        page = self._call("list_objects_v2", Prefix=self._key(prefix), Delimiter="/")
        sizes = {item["Key"][strip:]: int(item["Size"]) for item in page.get("Contents", [])}
        return sizes, not page.get("IsTruncated")

    def list_dirs(self, prefix: str) -> list[str]:
        full = self._key(prefix.rstrip("/")) + "/" if prefix.strip("/") else self._key("")
        return sorted(  # CommonPrefixes: one entry per "directory", however many objects below
            {
                p["Prefix"][len(full) :].rstrip("/")
                for page in self._listing_pages(full, Delimiter="/")
                for p in page.get("CommonPrefixes", [])
            }
        )

    def delete(self, keys: Iterable[str]) -> list[str]:
        wanted = list(keys)
        for start in range(0, len(wanted), _DELETE_BATCH):
            batch = wanted[start : start + _DELETE_BATCH]
            self._call(
                "delete_objects",
                Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True},
            )
        return wanted

    def _get(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """One GetObject: the body and the response (s3fs' ``cat_file`` costs two requests)."""
        from fsspec.asyn import sync  # noqa: PLC0415 - fsspec comes with s3fs

        async def get() -> tuple[bytes, dict[str, Any]]:
            response = await self._fs._call_s3("get_object", Bucket=self.bucket, Key=full)
            body = response["Body"]
            try:
                data: bytes = await body.read()
            finally:
                body.close()
            return data, response

        full = self._key(key)
        try:
            result: tuple[bytes, dict[str, Any]] = sync(self._fs.loop, get)
        except FileNotFoundError:
            return None
        return result

    def fetch(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        found = self._get(key)
        if found is None:
            return None
        data, response = found
        info = ObjectInfo(len(data), response["LastModified"].timestamp(), _server_time(response))
        return data, info

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self._call("head_object", Key=self._key(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(
            int(response["ContentLength"]),
            response["LastModified"].timestamp(),
            _server_time(response),
        )

    def check_conditional_writes(self) -> None:
        """Refuse this store if it ignores ``If-None-Match: *`` (see the function)."""
        check_conditional_writes(self)

    def abort_uploads(self, prefix: str) -> int:
        """Abort the incomplete multipart uploads under ``prefix`` (left by a writer that was
        killed mid-upload); return how many. Call only while holding the run's lease."""
        response = self._call("list_multipart_uploads", Prefix=self._key(prefix))
        aborted = 0
        for upload in response.get("Uploads", []):
            with contextlib.suppress(FileNotFoundError):
                self._call("abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
        return aborted


def check_conditional_writes(store: S3Store) -> None:
    """Refuse (``UsageError``) a store that ignores ``If-None-Match: *``: on it a lease cannot
    exclude anyone, and two processes could run the same run. Probed once per bucket and
    process: create an object, create it again (must be refused), delete it."""
    if store.bucket in _checked:
        return
    key = f".stalwart-probe/{os.getpid()}-{secrets.token_hex(8)}"
    try:
        first = store.create(key, b"probe")
        second = store.create(key, b"probe again")
    finally:
        with contextlib.suppress(Exception):
            store.delete([key])
    if first is None or second is not None:
        raise UsageError(
            f"the object store behind {store.root} ignores conditional writes "
            f"(a PUT with If-None-Match: * over an existing object was accepted): stalwart's "
            f"run lease would not exclude a second process there, so it refuses to run. Use a "
            f"store that honours If-None-Match (AWS S3, MinIO, Cloudflare R2)."
        )
    _checked.add(store.bucket)
