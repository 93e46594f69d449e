"""Style uploads from the page: checked (model, rate, size, one at a time), decoded in a thread pool, their
condition computed on the model's thread, and the new style offered to every page on that model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nst_jax.errors import ImageError
from nst_jax.files import array_digest
from nst_jax.serve import codec, security

log = logging.getLogger("nst_jax.serve")


class Uploads:
    """The upload path of a `LiveServer`.

    Args:
      config: the server's `ServerConfig` (style size, limits, uploads per minute).
      clients: the server's clients by id (the live dict).
      pool: where uploads are decoded.
    """

    def __init__(self, config: Any, clients: Mapping[int, Any], pool: concurrent.futures.Executor):
        self.config, self.clients, self.pool = config, clients, pool
        self._limits: dict[int, security.RateLimit] = {}

    def forget(self, cid: int) -> None:
        """The client left."""
        self._limits.pop(cid, None)

    def accept(self, client: Any, entry: Any, seq: int, nbytes: int) -> bool:
        """Whether to take this upload now (else the page gets an error saying why)."""
        if not entry.model.caps.style_images:
            client.error("this model's styles are its own table: it cannot take a style image", seq=seq)
            return False
        if client.uploading:
            client.error("an upload is still being processed; wait for it", seq=seq)
            return False
        rate = self._limits.setdefault(client.id, security.RateLimit(self.config.uploads_per_minute, 60.0))
        if not rate.allow():
            client.error(f"more than {self.config.uploads_per_minute} uploads a minute; try again in "
                         f"{rate.retry_after():.0f} s", seq=seq)
            return False
        if nbytes > self.config.limits.upload_bytes:
            client.error(f"upload is {nbytes} bytes; the limit is {self.config.limits.upload_bytes}", seq=seq)
            return False
        client.uploading = True
        return True

    async def run(self, client: Any, entry: Any, seq: int, name: str, payload: bytes) -> None:
        """Decode the upload, add it to `entry`'s styles and tell the pages (after `accept`)."""
        loop = asyncio.get_running_loop()
        try:
            img, pil = await loop.run_in_executor(self.pool, codec.decode_upload, payload,
                                                  self.config.style_size, self.config.limits)
            digest = array_digest(img)
            style = entry.library.find(digest)
            if style is None:
                condition = await entry.batcher.run_model(entry.model.condition, img)
                thumb = await loop.run_in_executor(self.pool, codec.thumbnail_jpeg, pil)
                label = Path(name).stem[:60] or "upload"
                style = entry.library.add(label, "upload", condition, thumb, digest)
                styles = entry.library.describe()
                for c in list(self.clients.values()):
                    if c.entry is entry:
                        c.put_control({"type": "styles", "styles": styles})
            if client.entry is entry:  # (else the page picked another model meanwhile)
                client.put_control({"type": "uploaded", "seq": seq, "style": style.describe()})
        except ImageError as e:
            client.error(str(e), seq=seq)
        except Exception as e:  # a model failure on one upload must not take the server down
            log.exception("upload failed")
            client.error(f"upload failed: {type(e).__name__}: {e}", seq=seq)
        finally:
            client.uploading = False
