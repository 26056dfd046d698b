"""Where media bytes live: a pluggable backend keyed by relative paths built from IDs.

:class:`MediaBackend` is the interface (local disk today, object storage later); keys
are produced only by the ``*_key`` functions below, from validated media IDs and server
names, never from a client's file name.  :class:`LocalDiskBackend` additionally refuses
any key that would resolve outside its root, so a bug upstream cannot become a path
traversal.

Layout (Synapse's, so an operator recognises it)::

    local_content/ab/cd/efghijklmnopqrstuvwx
    local_thumbnails/ab/cd/efghijklmnopqrstuvwx/96-96-image-png-crop
    remote_content/other.example/ab/cd/<filesystem id>
    remote_thumbnails/other.example/ab/cd/<filesystem id>/320-240-image-jpeg-scale
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO, Protocol

# Media IDs we create are 24 letters; IDs from other servers must match this too (the
# spec's grammar for media IDs: A-Z a-z 0-9 _ -).
MEDIA_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


class RunInThread(Protocol):
    def __call__(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...


class MediaBackend(Protocol):
    """Stores blobs under relative keys.  Every method may block only off the reactor."""

    async def store(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically (readers never see a partial file)."""

    async def open(self, key: str) -> BinaryIO | None:
        """A readable binary file for ``key`` (the caller closes it), or ``None``."""

    async def read(self, key: str) -> bytes | None:
        """The whole blob, or ``None`` when absent."""

    async def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are fine."""

    async def delete_prefix(self, prefix: str) -> None:
        """Remove every key below ``prefix`` (a media item's thumbnails)."""


def is_valid_media_id(media_id: str) -> bool:
    return bool(MEDIA_ID_RE.match(media_id))


def new_media_id() -> str:
    """24 random letters, as Synapse makes them."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(24))


def _shard(file_id: str) -> str:
    if not is_valid_media_id(file_id) or len(file_id) < 5:
        raise ValueError(f"invalid file id {file_id!r}")
    return f"{file_id[0:2]}/{file_id[2:4]}/{file_id[4:]}"


def _server_dir(server_name: str) -> str:
    if not server_name or server_name in (".", "..") or any(c in server_name for c in "/\\\0"):
        raise ValueError(f"invalid server name {server_name!r}")
    return server_name


def _thumbnail_name(width: int, height: int, media_type: str, method: str) -> str:
    kind = media_type.replace("/", "-")
    if not re.fullmatch(r"[a-z0-9.+-]+", kind) or method not in ("crop", "scale"):
        raise ValueError(f"invalid thumbnail {media_type!r} {method!r}")
    return f"{int(width)}-{int(height)}-{kind}-{method}"


def local_content_key(media_id: str) -> str:
    return f"local_content/{_shard(media_id)}"


def local_thumbnails_prefix(media_id: str) -> str:
    return f"local_thumbnails/{_shard(media_id)}"


def local_thumbnail_key(media_id: str, width: int, height: int, media_type: str, method: str) -> str:
    return f"{local_thumbnails_prefix(media_id)}/{_thumbnail_name(width, height, media_type, method)}"


def remote_content_key(server_name: str, filesystem_id: str) -> str:
    return f"remote_content/{_server_dir(server_name)}/{_shard(filesystem_id)}"


def remote_thumbnails_prefix(server_name: str, filesystem_id: str) -> str:
    return f"remote_thumbnails/{_server_dir(server_name)}/{_shard(filesystem_id)}"


def remote_thumbnail_key(
    server_name: str, filesystem_id: str, width: int, height: int, media_type: str, method: str
) -> str:
    name = _thumbnail_name(width, height, media_type, method)
    return f"{remote_thumbnails_prefix(server_name, filesystem_id)}/{name}"


class LocalDiskBackend:
    """Files under one directory; writes and deletes run in threads."""

    def __init__(self, root: str, *, run_in_thread: RunInThread) -> None:
        self.root = os.path.realpath(root)
        self._run_in_thread = run_in_thread

    def path_for(self, key: str) -> str:
        """The absolute path of ``key``, refusing anything that escapes the root."""
        if not key or key.startswith("/") or "\\" in key or "\0" in key:
            raise ValueError(f"invalid media key {key!r}")
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid media key {key!r}")
        path = os.path.join(self.root, *parts)
        if os.path.commonpath([self.root, os.path.realpath(path)]) != self.root:
            raise ValueError(f"media key {key!r} escapes the media store")
        return path

    async def store(self, key: str, data: bytes) -> None:
        path = self.path_for(key)

        def write() -> None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{secrets.token_hex(4)}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise

        await self._run_in_thread(write)

    async def open(self, key: str) -> BinaryIO | None:
        path = self.path_for(key)
        try:
            # Opening a local file does not block in practice; reads are streamed.
            return open(path, "rb")  # noqa: SIM115 (the caller closes it)
        except FileNotFoundError:
            return None

    async def read(self, key: str) -> bytes | None:
        path = self.path_for(key)

        def read() -> bytes | None:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None

        result: bytes | None = await self._run_in_thread(read)
        return result

    async def delete(self, key: str) -> None:
        path = self.path_for(key)

        def remove() -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

        await self._run_in_thread(remove)

    async def delete_prefix(self, prefix: str) -> None:
        path = self.path_for(prefix)
        await self._run_in_thread(shutil.rmtree, path, True)
