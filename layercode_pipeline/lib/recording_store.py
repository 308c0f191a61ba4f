"""Where verified recordings are kept: a directory, or a prefix on any S3-compatible store
(`LAYERCODE_RECORDINGS_URL`), through the landing's S3 client (`landing.objects`).

Both keep the same layout, `agent=<id>/dt=<date>/<session_id>.wav`, and the same rules:
- a file is downloaded to a temporary file first (`temp_path`), verified and measured there,
  then kept; the temporary file is always removed, so nothing but those files (one per
  download in flight, each under the size cap) ever sits on local disk for an object store;
- a kept file is never overwritten: a second copy of the same recording (a run killed after
  keeping it but before recording its row) is accepted when its size matches, and refused
  otherwise; only a kept file found broken is replaced, by name;
- `uri` is how the marts name the file: its absolute path, or `s3://bucket/prefix/key`.
"""

from __future__ import annotations

import os
import re
import shutil
from abc import ABC, abstractmethod
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from layercode_pipeline.landing.objects import ObjectLocation, is_object_url
from layercode_pipeline.lib.wav import InvalidWav, inspect_wav

if TYPE_CHECKING:
    from layercode_pipeline.config import StorageConfig

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
MULTIPART_BYTES = 8 * 1024 * 1024  # larger files go up in parts of this size
SIGNED_URL_TTL = timedelta(minutes=15)  # what a browser gets to play a recording from the store


class UnsafeIdentifier(ValueError):
    pass


class RecordingConflict(RuntimeError):
    """A different file is already kept under the recording's name."""


def recording_key(agent_id: str, session_id: str, dt: str) -> str:
    """`agent=<id>/dt=<date>/<session_id>.wav`, refusing ids that could leave the store's root."""
    for label, value in (("agent_id", agent_id), ("session_id", session_id)):
        if not SAFE_ID.match(value) or ".." in value:
            raise UnsafeIdentifier(f"{label} {value!r} is not safe in a file name")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", dt):
        raise UnsafeIdentifier(f"date {dt!r} is not YYYY-MM-DD")
    return f"agent={agent_id}/dt={dt}/{session_id}.wav"


class RecordingStore(ABC):
    """Where recordings are kept. `temp_dir` is local scratch space for downloads."""

    temp_dir: Path

    def temp_path(self, key: str) -> Path:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        return self.temp_dir / f".{key.replace('/', '_')}.{os.getpid()}.part"

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def put(self, tmp: Path, key: str, *, replace: bool = False) -> str:
        """Keep the verified file `tmp` under `key`; its uri. Never overwrites unless `replace`."""

    @abstractmethod
    def problems(self, kept: list[tuple[str, int]]) -> dict[str, str]:
        """For each (uri, size) kept, what is wrong with it now (gone, resized, broken), if anything."""

    @abstractmethod
    def fetch(self, uri: str, dest: Path) -> None:
        """Copy a kept file to local `dest` (to measure one kept before its audio was checked)."""

    @abstractmethod
    def delete(self, uri: str) -> bool:
        """Remove a kept file; whether there was one."""

    @abstractmethod
    def browser_url(self, uri: str) -> str | None:
        """A URL a browser may fetch the file from (with range requests), or None when the
        file is local and must be served by whoever can read it."""


class LocalRecordingStore(RecordingStore):
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.temp_dir = self.root / ".partial"

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise UnsafeIdentifier(f"{path} escapes {self.root}")
        return path

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def put(self, tmp: Path, key: str, *, replace: bool = False) -> str:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if replace:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)  # fails if the name exists: never overwrites
            except FileExistsError:
                if dest.stat().st_size != tmp.stat().st_size:
                    raise RecordingConflict(f"{dest} is already kept with a different size") from None
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the new name survives a crash
        finally:
            os.close(fd)
        return str(dest)

    def problems(self, kept: list[tuple[str, int]]) -> dict[str, str]:
        found = {}
        for uri, size in kept:
            path = Path(uri)
            try:
                if not path.is_file():
                    found[uri] = "the file is missing"
                    continue
                info = inspect_wav(path)  # the header only
            except (InvalidWav, OSError) as exc:
                found[uri] = str(exc)
                continue
            if info.file_bytes != size:
                found[uri] = f"{info.file_bytes} bytes on disk, {size} when kept"
        return found

    def fetch(self, uri: str, dest: Path) -> None:
        shutil.copyfile(uri, dest)

    def key_of(self, uri: str) -> str:
        """The key a kept file's uri names (`agent=<id>/dt=<date>/<session>.wav`): a uri is the
        absolute path the file was kept under, and the data directory may have moved since (a
        copy, a restore, another mount): the key finds the file under this store's root."""
        parts = Path(uri).parts
        for i, part in enumerate(parts):
            if part.startswith("agent="):
                return "/".join(parts[i:])
        raise UnsafeIdentifier(f"{uri} is not a kept recording's path")

    def delete(self, uri: str) -> bool:
        """Remove the kept file under this store's root (never a file outside it: a uri kept
        before the data directory moved still names the file here, not the old place)."""
        try:
            self.path(self.key_of(uri)).unlink()
            return True
        except FileNotFoundError:
            return False

    def browser_url(self, uri: str) -> str | None:
        return None


class ObjectRecordingStore(RecordingStore):
    def __init__(self, location: ObjectLocation, temp_dir: Path):
        self.location = location
        self.temp_dir = temp_dir
        self._store = location.store()

    def uri(self, key: str) -> str:
        return self.location.object_url(key)

    def key_of(self, uri: str) -> str:
        root = self.location.url.rstrip("/") + "/"
        if not uri.startswith(root):
            raise ValueError(f"{uri} is not under {self.location.url}")
        return uri.removeprefix(root)

    def _size(self, key: str) -> int | None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            return int(obstore.head(self._store, key)["size"])
        except (NotFoundError, FileNotFoundError):
            return None

    def put(self, tmp: Path, key: str, *, replace: bool = False) -> str:
        import obstore
        from obstore.exceptions import AlreadyExistsError

        size = tmp.stat().st_size
        attributes = {"Content-Type": "audio/wav"}
        if size <= MULTIPART_BYTES and not replace:
            try:  # a conditional PUT (If-None-Match): never overwrites
                obstore.put(self._store, key, tmp, mode="create", attributes=attributes)
                return self.uri(key)
            except AlreadyExistsError:
                existing: int | None = self._size(key)
        else:
            # a conditional write cannot be multipart through obstore: look first (a recording
            # is written by one run at a time, and a second copy would hold the same bytes)
            existing = None if replace else self._size(key)
            if existing is None:
                obstore.put(
                    self._store,
                    key,
                    tmp,
                    attributes=attributes,
                    use_multipart=size > MULTIPART_BYTES,
                    chunk_size=MULTIPART_BYTES,
                    max_concurrency=4,
                )
                return self.uri(key)
        if existing != size:
            raise RecordingConflict(f"{self.uri(key)} is already kept with {existing} bytes, not {size}")
        return self.uri(key)

    def problems(self, kept: list[tuple[str, int]]) -> dict[str, str]:
        if not kept:
            return {}
        import obstore

        sizes: dict[str, int] = {}  # one listing instead of a HEAD per file
        for batch in obstore.list(self._store, "agent=", chunk_size=1000):
            sizes.update({meta["path"]: int(meta["size"]) for meta in batch})
        found = {}
        for uri, size in kept:
            have = sizes.get(self.key_of(uri))
            if have is None:
                found[uri] = "the object is missing"
            elif have != size:
                found[uri] = f"{have} bytes in the store, {size} when kept"
        return found

    def fetch(self, uri: str, dest: Path) -> None:
        import obstore

        with dest.open("wb") as fh:
            for chunk in obstore.get(self._store, self.key_of(uri)):
                fh.write(chunk)

    def delete(self, uri: str) -> bool:
        import obstore

        key = self.key_of(uri)
        if self._size(key) is None:
            return False
        obstore.delete(self._store, key)
        return True

    def browser_url(self, uri: str) -> str | None:
        import obstore

        return str(obstore.sign(self._store, "GET", self.key_of(uri), SIGNED_URL_TTL))


def recording_store(storage: StorageConfig, local_root: Path) -> RecordingStore:
    """The store LAYERCODE_RECORDINGS_URL names: `s3://...`, else the directory `local_root`."""
    location = ObjectLocation.at(storage.recordings_url, storage) if is_object_url(storage.recordings_url) else None
    if location is not None:
        return ObjectRecordingStore(location, storage.data_dir / "tmp" / "recordings")
    return LocalRecordingStore(local_root)
