"""Object storage for the whole platform: one small layer over boto3 and the local disk.

Every place that reads or writes "a folder or an s3:// prefix" (ingestion sources, checkpoints,
evaluation reports, the model registry) goes through `ObjectStore`, so a path works the same
whether it is `data/shards` or `s3://vatt-data/shards`:

    store = ObjectStore(cfg.storage)     # once, at the entry point; passed down from there
    store.upload_dir("runs/ckpt", "s3://vatt-data/runs/ckpt")
    names = store.list("s3://vatt-data/raw/kinetics")      # relative paths under the prefix
    meta = json.loads(store.read_bytes("s3://vatt-data/registry/promoted.json"))

The endpoint comes from `StorageConfig.endpoint_url`, else the environment (`AWS_ENDPOINT_URL_S3`,
then `AWS_ENDPOINT_URL`), else AWS itself; credentials only ever come from the environment
(boto3's default chain: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, ...).
Transient faults are retried by botocore ("standard" retry mode); what is left is raised as a
`StorageError` whose message names the endpoint, the bucket or key, and what to change.
Ray Train takes a pyarrow filesystem instead of boto3: `pyarrow_filesystem()` builds one with the
same endpoint and credentials.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterator, Optional

if TYPE_CHECKING:  # config must stay importable without boto3/pyarrow and vice versa
    import pyarrow.fs

    from vatt.config import StorageConfig

ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
CREDENTIAL_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for "
                   "temporary keys) in the environment, or AWS_PROFILE")
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
               "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed", "403",
               "Forbidden", "AllAccessDisabled"}
_NO_BUCKET_CODES = {"NoSuchBucket"}
_NO_KEY_CODES = {"NoSuchKey", "404", "NotFound"}


class StorageError(RuntimeError):
    """An object-store operation failed; the message says what and how to fix it."""


class StorageAuthError(StorageError, PermissionError):
    """The store rejected the credentials (or they are missing, or lack permission)."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """A bucket, object or local path does not exist."""


class StorageConnectionError(StorageError, ConnectionError):
    """The endpoint could not be reached (after botocore's retries)."""


# ---------------------------------------------------------------------------------------------
# Locations


@dataclass(frozen=True)
class Location:
    """A parsed path: `s3://bucket/key` (bucket set) or a local path (bucket None)."""

    bucket: Optional[str]
    key: str  # s3: key or prefix without leading "/"; local: the path as given

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    @property
    def local_path(self) -> Path:
        if self.is_s3:
            raise ValueError(f"{self} is an s3:// location, not a local path")
        return Path(self.key)

    def join(self, *parts: str) -> "Location":
        if self.is_s3:
            key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
            return Location(self.bucket, key)
        return Location(None, str(Path(self.key, *parts)))

    @property
    def prefix(self) -> str:
        """The key as a "folder" prefix (ends in "/" unless it is the bucket root)."""
        return f"{self.key.rstrip('/')}/" if self.key.strip("/") else ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.is_s3 else self.key


def parse_uri(uri: "str | os.PathLike[str] | Location") -> Location:
    """`s3://bucket/some/prefix` -> Location("bucket", "some/prefix"); anything else is local."""
    if isinstance(uri, Location):
        return uri
    text = os.fspath(uri)
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"'{text}' names no bucket; write s3://<bucket>/<prefix>")
        return Location(bucket, key.lstrip("/"))
    if "://" in text:
        raise ValueError(f"'{text}': only local paths and s3://bucket/prefix URIs are supported")
    return Location(None, text)


def is_s3_uri(uri: "str | os.PathLike[str]") -> bool:
    return os.fspath(uri).startswith("s3://")


def resolve_endpoint(configured: Optional[str] = None) -> tuple[Optional[str], str]:
    """The S3 endpoint URL to use and where it came from (for error messages)."""
    if configured:
        return configured, "storage.endpoint_url"
    for var in ENDPOINT_ENV_VARS:
        if os.environ.get(var):
            return os.environ[var], f"env {var}"
    return None, f"AWS default (set {' or '.join(ENDPOINT_ENV_VARS)} for another S3 store)"


# ---------------------------------------------------------------------------------------------
# The store


class ObjectStore:
    """Read, write, list and copy files on the local disk or an S3-compatible store.

    Every method takes a local path or an `s3://bucket/key` URI. The boto3 client is created on
    first S3 use (thread-safe; folder transfers run `max_workers` uploads/downloads at once).
    """

    def __init__(self, settings: "StorageConfig | None" = None, max_workers: int = 8) -> None:
        """`settings`: the config's `storage` (endpoint, region, retries, timeouts; their
        defaults live in StorageConfig); None takes those defaults (tests, one-off scripts).
        Entry points build one store from `cfg.storage` and pass it down."""
        if settings is None:
            from vatt.config import StorageConfig

            settings = StorageConfig()
        self.endpoint_url, self.endpoint_source = resolve_endpoint(settings.endpoint_url)
        self.region = (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                       or settings.region)
        self.max_attempts = settings.max_attempts
        self.connect_timeout_s = settings.connect_timeout_s
        self.read_timeout_s = settings.read_timeout_s
        self.max_workers = max_workers
        self._client: Any = None

    @classmethod
    def from_config(cls, settings: "StorageConfig | None" = None) -> "ObjectStore":
        """The same as `ObjectStore(settings)`: the store `cfg.storage` configures."""
        return cls(settings)

    # -- boto3 ---------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            session = boto3.session.Session()
            self._client = session.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region,
                config=BotoConfig(
                    retries={"max_attempts": self.max_attempts, "mode": "standard"},
                    connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s,
                    # path-style works on every S3-compatible store (SeaweedFS, MinIO, Ceph)
                    s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                ))
        return self._client

    def pyarrow_credentials(self) -> dict[str, Any]:
        """Keys for pyarrow's S3 filesystem: static keys as given, or {} for temporary ones that
        expire and refresh (STS assume-role, IRSA web identity, instance or container roles,
        credential_process), which pyarrow's AWS SDK then resolves and refreshes itself; frozen
        into the filesystem they would expire in the middle of a run."""
        import boto3
        from botocore.credentials import RefreshableCredentials

        creds = boto3.session.Session().get_credentials()
        if creds is None:
            raise StorageAuthError(f"no S3 credentials found for {self._where()}: {CREDENTIAL_HINT}")
        if isinstance(creds, RefreshableCredentials):
            return {}
        frozen = creds.get_frozen_credentials()
        return dict(access_key=frozen.access_key, secret_key=frozen.secret_key,
                    session_token=frozen.token)

    def _where(self, loc: Optional[Location] = None) -> str:
        endpoint = self.endpoint_url or "AWS S3"
        target = f"{loc} at " if loc is not None else ""
        return f"{target}endpoint {endpoint} (from {self.endpoint_source})"

    @contextmanager
    def _errors(self, action: str, loc: Location) -> Iterator[None]:
        """Turn botocore exceptions into StorageErrors that say what to fix."""
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as
                                         BotoConnectionError, NoCredentialsError,
                                         PartialCredentialsError)

        try:
            yield
        except ClientError as err:
            error = err.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = error.get("Message") or code
            if code in _AUTH_CODES or status == 403:
                raise StorageAuthError(
                    f"cannot {action} {self._where(loc)}: the store rejected the credentials "
                    f"({code}: {detail}). Check the keys for bucket '{loc.bucket}' and the "
                    f"endpoint: {CREDENTIAL_HINT}"
                ) from None
            if code in _NO_BUCKET_CODES:
                raise StorageNotFoundError(self._no_bucket_message(loc)) from None
            if code in _NO_KEY_CODES or status == 404:
                raise StorageNotFoundError(f"cannot {action} {self._where(loc)}: no such object") from None
            raise StorageError(f"cannot {action} {self._where(loc)}: {code}: {detail}") from err
        except (NoCredentialsError, PartialCredentialsError) as err:
            raise StorageAuthError(
                f"cannot {action} {self._where(loc)}: no usable S3 credentials ({err}); "
                f"{CREDENTIAL_HINT}") from None
        except BotoConnectionError as err:
            raise StorageConnectionError(
                f"cannot {action} {loc}: the S3 endpoint {self.endpoint_url or 'AWS S3'} (from "
                f"{self.endpoint_source}) is unreachable after {self.max_attempts} attempts "
                f"({type(err).__name__}). Is the server running, and is "
                f"{' / '.join(ENDPOINT_ENV_VARS)} or storage.endpoint_url right?") from None
        except BotoCoreError as err:
            raise StorageError(f"cannot {action} {self._where(loc)}: {err}") from err

    def _no_bucket_message(self, loc: Location) -> str:
        return (f"bucket '{loc.bucket}' does not exist at endpoint {self.endpoint_url or 'AWS S3'} "
                f"(from {self.endpoint_source}). Create it (ObjectStore.ensure_bucket, or "
                f"`aws s3 mb s3://{loc.bucket}`) or fix the URI {loc}")

    def _require_bucket(self, loc: Location) -> None:
        """After a bare 404 (HEAD has no body): say whether the bucket or the key is missing."""
        with self._errors("check bucket", Location(loc.bucket, "")):
            try:
                self.client.head_bucket(Bucket=loc.bucket)
            except Exception as err:  # noqa: BLE001 - re-raised with a clear message below
                if getattr(err, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                    raise StorageNotFoundError(self._no_bucket_message(loc)) from None
                raise

    # -- buckets -------------------------------------------------------------------------------

    def check_bucket(self, uri: "str | Location") -> None:
        """Raise a clear StorageError unless the bucket exists and the credentials work."""
        loc = parse_uri(uri)
        if loc.is_s3:
            self._require_bucket(loc)

    def ensure_bucket(self, uri: "str | Location") -> None:
        """Create the bucket of `uri` if it does not exist (no-op for local paths)."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            return
        try:
            self._require_bucket(loc)
        except StorageNotFoundError:
            with self._errors("create bucket", Location(loc.bucket, "")):
                self.client.create_bucket(Bucket=loc.bucket)

    # -- single objects ------------------------------------------------------------------------

    def exists(self, uri: "str | Location") -> bool:
        """True if `uri` is an object/file, or a prefix/folder with something under it."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            return loc.local_path.exists()
        with self._errors("check", loc):
            if loc.key.strip("/"):
                try:
                    self.client.head_object(Bucket=loc.bucket, Key=loc.key)
                    return True
                except Exception as err:  # noqa: BLE001
                    if getattr(err, "response", {}).get("Error", {}).get("Code") not in _NO_KEY_CODES:
                        raise
            page = self.client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.prefix, MaxKeys=1)
            return page.get("KeyCount", 0) > 0

    def modified_time(self, uri: "str | Location") -> float:
        """When the file or object `uri` was last written (seconds since the epoch)."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            return _local_existing(loc).stat().st_mtime
        with self._errors("check", loc):
            head = self.client.head_object(Bucket=loc.bucket, Key=loc.key)
            return head["LastModified"].timestamp()

    def read_bytes(self, uri: "str | Location") -> bytes:
        loc = parse_uri(uri)
        if not loc.is_s3:
            return _local_existing(loc).read_bytes()
        with self._errors("read", loc):
            return self.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()

    def read_versioned(self, uri: "str | Location") -> tuple[Optional[bytes], Optional[str]]:
        """(content, ETag) of an S3 object, (None, None) when there is none: the ETag is what a
        later `write_if_unchanged` checks."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            raise ValueError(f"{uri}: versioned reads are for s3:// objects")
        with self._errors("read", loc):
            try:
                answer = self.client.get_object(Bucket=loc.bucket, Key=loc.key)
            except Exception as err:  # noqa: BLE001
                if getattr(err, "response", {}).get("Error", {}).get("Code") in _NO_KEY_CODES:
                    return None, None
                raise
            return answer["Body"].read(), answer["ETag"]

    def write_if_unchanged(self, uri: "str | Location", data: bytes, etag: Optional[str]) -> bool:
        """Write `data` only if the object is still the version `etag` names (None: only if
        there is no object yet): a conditional PUT, so two writers cannot overwrite each other's
        update. False when someone else wrote first (re-read and try again)."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            raise ValueError(f"{uri}: conditional writes are for s3:// objects")
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        with self._errors("write", loc):
            try:
                self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, **condition)
            except Exception as err:  # noqa: BLE001
                code = getattr(err, "response", {}).get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    return False
                raise
        return True

    def read_text(self, uri: "str | Location", encoding: str = "utf-8") -> str:
        return self.read_bytes(uri).decode(encoding)

    def write_bytes(self, uri: "str | Location", data: bytes) -> None:
        loc = parse_uri(uri)
        if not loc.is_s3:
            path = loc.local_path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # readers never see a half-written file
            return
        with self._errors("write", loc):
            self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data)

    def write_text(self, uri: "str | Location", text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(uri, text.encode(encoding))

    def upload_file(self, local: "str | os.PathLike[str]", uri: "str | Location") -> None:
        """Copy one local file to `uri` (multipart for large files when `uri` is S3)."""
        src = _local_existing(parse_uri(local))
        loc = parse_uri(uri)
        if not loc.is_s3:
            loc.local_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, loc.local_path)
            return
        with self._errors("upload to", loc):
            self.client.upload_file(str(src), loc.bucket, loc.key)

    def download_file(self, uri: "str | Location", local: "str | os.PathLike[str]") -> Path:
        loc = parse_uri(uri)
        dst = Path(local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not loc.is_s3:
            shutil.copyfile(_local_existing(loc), dst)
            return dst
        tmp = dst.with_name(f".{dst.name}.part")
        with self._errors("download", loc):
            try:
                self.client.download_file(loc.bucket, loc.key, str(tmp))
            except Exception as err:  # noqa: BLE001 - HEAD 404 does not say bucket vs key
                tmp.unlink(missing_ok=True)
                if getattr(err, "response", {}).get("Error", {}).get("Code") in _NO_KEY_CODES:
                    self._require_bucket(loc)
                raise
        tmp.replace(dst)
        return dst

    def delete(self, uri: "str | Location") -> None:
        """Remove one object/file (missing is fine: delete is idempotent)."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            loc.local_path.unlink(missing_ok=True)
            return
        with self._errors("delete", loc):
            self.client.delete_object(Bucket=loc.bucket, Key=loc.key)

    # -- folders / prefixes --------------------------------------------------------------------

    def list(self, uri: "str | Location") -> list[str]:
        """Every file under a folder or prefix, recursively, as sorted relative POSIX paths.

        A missing local folder or empty prefix gives []; a missing bucket is an error.
        """
        loc = parse_uri(uri)
        if not loc.is_s3:
            root = loc.local_path
            if root.is_file():
                return [root.name]
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        names = []
        with self._errors("list", loc):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.prefix):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):  # "folder" marker objects
                        names.append(obj["Key"][len(loc.prefix):])
        return sorted(names)

    def list_details(self, uri: "str | Location") -> list[tuple[str, int, str]]:
        """(relative path, size, ETag or mtime) of every file under a folder or prefix, sorted:
        what changes when a file changes, without reading it."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            root = loc.local_path
            return sorted((p.relative_to(root).as_posix(), p.stat().st_size, str(p.stat().st_mtime_ns))
                          for p in root.rglob("*") if p.is_file())
        found = []
        with self._errors("list", loc):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.prefix):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        found.append((obj["Key"][len(loc.prefix):], int(obj["Size"]),
                                      str(obj.get("ETag", "")).strip('"')))
        return sorted(found)

    def upload_dir(self, local_dir: "str | os.PathLike[str]", uri: "str | Location") -> int:
        """Copy every file under `local_dir` to the prefix `uri`; returns the number of files."""
        src = _local_existing(parse_uri(local_dir))
        if not src.is_dir():
            raise StorageNotFoundError(f"{src} is not a folder (upload_dir copies a folder)")
        dst = parse_uri(uri)
        names = self.list(src)
        if dst.is_s3:
            self.check_bucket(dst)  # one clear error instead of one per file
        self._parallel(lambda name: self.upload_file(src / name, dst.join(name)), names)
        return len(names)

    def upload_files(self, pairs: "list[tuple[str | os.PathLike[str], str]]") -> None:
        """Copy each (local file, uri) pair, in parallel."""
        self._parallel(lambda pair: self.upload_file(*pair), list(pairs))

    def download_dir(self, uri: "str | Location", local_dir: "str | os.PathLike[str]") -> int:
        """Copy every file under the prefix `uri` into `local_dir`; returns the number of files."""
        src = parse_uri(uri)
        dst = Path(local_dir)
        if src.is_s3:
            self.check_bucket(src)
        names = self.list(src)
        if not names and not self.exists(src):
            raise StorageNotFoundError(f"nothing to download: {self._where(src)} is empty or missing")
        for name in names:  # keys are untrusted: stay inside local_dir
            if name.startswith("/") or ".." in PurePosixPath(name).parts:
                raise StorageError(f"refusing to download {src.join(name)}: the key leaves {dst}")
        self._parallel(lambda name: self.download_file(src.join(name), dst / name), names)
        return len(names)

    def _parallel(self, fn: Any, items: list[str]) -> None:
        if len(items) <= 1:
            for item in items:
                fn(item)
            return
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            for future in [pool.submit(fn, item) for item in items]:
                future.result()  # re-raise the first failure

    # -- pyarrow (Ray Train storage) -----------------------------------------------------------

    def pyarrow_filesystem(self, uri: "str | Location") -> tuple["pyarrow.fs.FileSystem", str]:
        """(filesystem, path) for `uri`, as Ray Train's `RunConfig(storage_path=path,
        storage_filesystem=filesystem)` wants them; S3 gets this store's endpoint and keys."""
        import pyarrow.fs

        loc = parse_uri(uri)
        if not loc.is_s3:
            return pyarrow.fs.LocalFileSystem(), str(loc.local_path.resolve())
        options: dict[str, Any] = dict(**self.pyarrow_credentials(), region=self.region,
                                       retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(
                                           max_attempts=self.max_attempts),
                                       connect_timeout=self.connect_timeout_s,
                                       request_timeout=self.read_timeout_s)
        if self.endpoint_url:
            scheme, sep, host = self.endpoint_url.partition("://")
            if not sep:  # a bare host:port
                scheme, host = "https", self.endpoint_url
            options.update(endpoint_override=host.rstrip("/"), scheme=scheme,
                           force_virtual_addressing=False)
        return pyarrow.fs.S3FileSystem(**options), f"{loc.bucket}/{loc.key}".rstrip("/")


def _local_existing(loc: Location) -> Path:
    path = loc.local_path
    if not path.exists():
        raise StorageNotFoundError(f"no such file or folder: {path}")
    return path


_STORE_ENV_VARS = (*ENDPOINT_ENV_VARS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                   "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION")
_default_store: Optional[tuple[tuple[Optional[str], ...], ObjectStore]] = None


def default_store() -> ObjectStore:
    """A process-wide store built from the environment and StorageConfig defaults; rebuilt
    when the AWS_* environment changes (so a changed key or endpoint is never served stale)."""
    global _default_store
    env = tuple(os.environ.get(var) for var in _STORE_ENV_VARS)
    if _default_store is None or _default_store[0] != env:
        _default_store = (env, ObjectStore.from_config())
    return _default_store[1]


def pyarrow_filesystem(uri: str, cfg: "StorageConfig | None" = None) -> tuple["pyarrow.fs.FileSystem", str]:
    """Shortcut for `ObjectStore.from_config(cfg).pyarrow_filesystem(uri)`."""
    return ObjectStore.from_config(cfg).pyarrow_filesystem(uri)


__all__ = [
    "ObjectStore", "Location", "parse_uri", "is_s3_uri", "resolve_endpoint", "default_store",
    "pyarrow_filesystem", "StorageError", "StorageAuthError", "StorageNotFoundError",
    "StorageConnectionError", "ENDPOINT_ENV_VARS",
]
