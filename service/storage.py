"""Object storage behind one small class: a local directory (file://) or S3/MinIO (s3://).

fsspec gives both the same file API, so there is one implementation and no branches on
the backend beyond how the filesystem is built.
"""

import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import fsspec

from service.settings import get_settings

CHUNK = 1024 * 1024


class ObjectStore:
    def __init__(self, url: str, s3_endpoint_url: str | None = None) -> None:
        options: dict[str, Any] = {}
        if url.startswith("file://"):
            options["auto_mkdir"] = True
        elif url.startswith("s3://"):
            if s3_endpoint_url:
                options["endpoint_url"] = s3_endpoint_url
            # Listings must see what this process just wrote (checkpoints, exports).
            options["use_listings_cache"] = False
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **options)
        self.root = self.root.rstrip("/")
        if url.startswith("file://"):
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}")
        return f"{self.root}/{key}"

    def open_write(self, key: str) -> IO[bytes]:
        return self.fs.open(self._path(key), "wb")

    def open_read(self, key: str) -> IO[bytes]:
        return self.fs.open(self._path(key), "rb")

    def iter_bytes(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with self.open_read(key) as f:
            while block := f.read(chunk):
                yield block

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def put_file(self, local: str | os.PathLike[str], key: str) -> None:
        with open(local, "rb") as src, self.open_write(key) as dst:
            shutil.copyfileobj(src, dst, CHUNK)

    def get_file(self, key: str, local: str | os.PathLike[str]) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        with self.open_read(key) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)

    def put_dir(self, local_dir: str | os.PathLike[str], prefix: str,
                last: str | None = None) -> int:
        """Upload every file under local_dir to prefix/; returns the bytes written.

        `last` names a file uploaded after all others: a manifest whose presence says the
        set is complete, so a reader never trusts a torn upload.
        """
        total = 0
        base = Path(local_dir)
        files = sorted(p for p in base.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.relative_to(base).as_posix() == last)  # stable: last last
        for path in files:
            self.put_file(path, f"{prefix}/{path.relative_to(base).as_posix()}")
            total += path.stat().st_size
        return total

    def children(self, prefix: str) -> list[str]:
        """The names directly under prefix/ (files and folders)."""
        root = self._path(prefix)
        if not self.fs.exists(root):
            return []
        return sorted({str(p).rstrip("/").rsplit("/", 1)[-1]
                       for p in self.fs.ls(root, detail=False)} - {""})

    def last_modified(self, prefix: str) -> float | None:
        """The newest modification time (unix seconds) of what is under prefix/ (a folder
        that holds nothing: its own); None when nothing is there."""
        root = self._path(prefix)
        found = self.fs.find(root, detail=True)
        times = [t for t in (_mtime(info) for info in found.values()) if t is not None]
        if not times and self.fs.exists(root):
            times = [t for t in [_mtime(self.fs.info(root))] if t is not None]
        return max(times) if times else None

    def bytes_under(self, prefix: str) -> int:
        """The bytes of the files under prefix/."""
        root = self._path(prefix)
        if not self.fs.exists(root):
            return 0
        return sum(int(info.get("size") or 0)
                   for info in self.fs.find(root, detail=True).values())

    def list(self, prefix: str) -> list[str]:
        """Keys under prefix/, relative to it."""
        root = self._path(prefix)
        if not self.fs.exists(root):
            return []
        found = self.fs.find(root)
        strip = len(root.rstrip("/")) + 1
        return sorted(p[strip:] for p in (str(f) for f in found))

    def get_dir(self, prefix: str, local_dir: str | os.PathLike[str]) -> None:
        for rel in self.list(prefix):
            self.get_file(f"{prefix}/{rel}", Path(local_dir) / rel)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path)

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def check(self) -> None:
        """Raise if the store cannot be reached (used by /health)."""
        # An S3 prefix "exists" only once something is written under it; the bucket must.
        top = self.root.split("/", 1)[0] if self.url.startswith("s3://") else self.root
        self.fs.invalidate_cache()
        self.fs.ls(top, detail=False)


def _mtime(info: dict[str, Any]) -> float | None:
    """A listing entry's modification time: local files say mtime, S3 LastModified."""
    value = info.get("mtime", info.get("LastModified"))
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if isinstance(value, int | float) else None


@lru_cache
def get_store() -> ObjectStore:
    settings = get_settings()
    return ObjectStore(settings.storage_url, settings.s3_endpoint_url)
