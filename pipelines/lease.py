"""One writer per scope of the lake: a second writer exits 1 with one line.

Two scopes (``pipelines.layout.SCOPES``): the ingest tables, and the derived tables the metrics
stage writes from pinned versions of the ingest tables (``lake.lake_lock`` says who holds which).
Each scope has its own lock or lease below; the ingest scope keeps the names of the single lock of
earlier releases.

A local lake (``DATA_DIR/lake``): an ``fcntl`` lock on ``lake/.lock`` (``lake/.lock-derived``). The
kernel releases it when the holder dies, even under ``kill -9``, so a crashed run never blocks the
next one.

An object-store lake (``s3://bucket/prefix``) has no locks, so the writer holds a **lease**: the
object ``<prefix>/_lease.json`` (``_lease-derived.json``; its run id, host, pid and time to live), created with a
put-if-absent (``If-None-Match: *``: of two runs starting together exactly one creates it), renewed
by a heartbeat thread with ``If-Match`` on the ETag it last wrote, and deleted with ``If-Match`` at
the end. A holder that died (``kill -9``, a lost machine) stops renewing; the next run takes the
lease over once it is older than its time to live (sooner when the holder was a process of this
same host that no longer exists), again with ``If-Match`` on the stale ETag, so one taker wins.

The lease is not the only guard: every run commits on top of the table versions it read when it
started (``lake.commit(read_version=...)``), so a writer that lost its lease without noticing (a
pause longer than the time to live) fails at its commit by Delta's conflict check, never adds
duplicates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import threading
import uuid

from pipelines.layout import INGEST_SCOPE
from transforms.errors import LakeError

log = logging.getLogger(__name__)

LEASE_SECONDS_ENV = "REVENUE_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60


@contextlib.contextmanager
def writer_lease(layout, scope: str = INGEST_SCOPE):
    """Hold the lake's single-writer lease (lock) of one scope for the duration of the block."""
    if layout.lake_is_local:
        with _local_lock(layout, scope):
            yield
        return
    lease = ObjectLease(layout, scope)
    lease.acquire()
    try:
        yield
    finally:
        lease.release()


@contextlib.contextmanager
def _local_lock(layout, scope: str = INGEST_SCOPE):
    root = layout.lake
    root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_file_for(scope), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LakeError(f"another run is writing to {root} (lock held{_of(scope)}); wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _of(scope: str) -> str:
    return "" if scope == INGEST_SCOPE else f" on the {scope} tables"


def lease_seconds() -> int:
    value = os.environ.get(LEASE_SECONDS_ENV)
    try:
        seconds = int(value) if value else DEFAULT_LEASE_SECONDS
    except ValueError:
        raise LakeError(f"{LEASE_SECONDS_ENV}={value!r} is not a number of seconds") from None
    if seconds < 3:
        raise LakeError(f"{LEASE_SECONDS_ENV}={value!r}: at least 3 seconds")
    return seconds


def s3_client():
    """A boto3 S3 client configured from the standard AWS environment variables."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise LakeError("an object-store lake needs boto3 for its writer lease: "
                        "pip install 'revenue-analytics[s3]'") from None  # fmt: skip

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def _alive_here(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: only the time to live says it is gone
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


class ObjectLease:
    """The lease object of an object-store lake (see the module doc)."""

    def __init__(self, layout, scope: str = INGEST_SCOPE):
        bucket, _, key = layout.lease_path_for(scope).partition("/")
        self.bucket, self.key, self.where = bucket, key, layout.lake_location
        self.of = _of(scope)
        self.seconds = lease_seconds()
        self.token = uuid.uuid4().hex
        self.etag: str | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.client = s3_client()

    def _body(self) -> bytes:
        return json.dumps({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "seconds": self.seconds,
                           "renewed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}).encode()  # fmt: skip

    def _put(self, **condition) -> str:
        return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                      ContentType="application/json", **condition)["ETag"]  # fmt: skip

    @staticmethod
    def _precondition_failed(exc) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")

    def acquire(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.etag = self._put(IfNoneMatch="*")
        except ClientError as exc:
            if not self._precondition_failed(exc):
                raise LakeError(f"cannot create the writer lease {self.bucket}/{self.key}: {exc}") from None
            self._take_over_stale()
        self._thread = threading.Thread(target=self._heartbeat, name="lake-lease", daemon=True)
        self._thread.start()

    def _take_over_stale(self) -> None:
        from botocore.exceptions import ClientError

        try:
            held = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError:  # released meanwhile: try once more from scratch
            try:
                self.etag = self._put(IfNoneMatch="*")
                return
            except ClientError:
                raise LakeError(
                    f"another run is writing to {self.where} (lease held{self.of}); wait for it to finish"
                ) from None
        holder = json.loads(held["Body"].read() or b"{}")
        age = (dt.datetime.now(dt.UTC) - held["LastModified"]).total_seconds()
        ttl = int(holder.get("seconds") or self.seconds)
        if age <= ttl and _alive_here(holder):
            raise LakeError(f"another run is writing to {self.where} (lease held{self.of} by pid {holder.get('pid')} on "
                            f"{holder.get('host')}, renewed {age:.0f}s ago); wait for it to finish")  # fmt: skip
        try:
            self.etag = self._put(IfMatch=held["ETag"])
        except ClientError:
            raise LakeError(f"another run is writing to {self.where} (it took over the expired lease first); "
                            "wait for it to finish") from None  # fmt: skip
        log.warning("took over the writer lease of %s from pid %s on %s (not renewed for %.0fs)", self.where,
                    holder.get("pid"), holder.get("host"), age)  # fmt: skip

    def _heartbeat(self) -> None:
        from botocore.exceptions import ClientError

        while not self._stop.wait(self.seconds / 3):
            try:
                self.etag = self._put(IfMatch=self.etag)
            except ClientError as exc:
                if self._precondition_failed(exc):
                    log.error("lost the writer lease of %s: another run took it over", self.where)
                    self.lost.set()
                    return
                log.warning("renewing the writer lease of %s failed (%s); retrying", self.where, exc)
            except Exception as exc:  # a network error: the next beat retries, the TTL decides
                log.warning("renewing the writer lease of %s failed (%s); retrying", self.where, exc)

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost.is_set():
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError as exc:  # expired and taken over: it is the new holder's now
            log.warning("could not release the writer lease of %s: %s", self.where, exc)
