"""Receiving a package or bundle: into a local file, and on into storage at the same time.

An upload is staged (:meth:`Storage.stage`): the body lands in a local file where the
archive can be inspected with random access, while storage sends it on as it grows (S3
sends complete parts; a local folder keeps the file where the object will be). Once the
body is in, storage finishes the object in the background while the caller validates
the file, so the two overlap instead of following each other. Until the caller calls
:meth:`Spool.keep`, leaving the ``with`` block removes the stored object again, so a
refused or failed upload leaves nothing behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from aimms_portal.storage import Storage, StoredObject
from aimms_portal.storage.base import Readable, StagedPut

logger = logging.getLogger(__name__)


class Spool:
    """One incoming upload: stored under ``key``, readable at :attr:`path` meanwhile.

    Use as a context manager, in this order: :meth:`receive` once; inspect :attr:`path`
    (read only; storage finishes the object meanwhile); :meth:`finish` before anything
    that refers to the object is recorded; :meth:`keep` once that is committed.
    """

    def __init__(
        self, storage: Storage, key: str, *, max_bytes: int, spool_dir: Path | None = None
    ) -> None:
        self.storage = storage
        self.key = key
        self.max_bytes = max_bytes
        self._spool_dir = spool_dir
        self._staged: StagedPut | None = None
        self._finishing: Future[None] | None = None
        self._finished = False
        self._kept = False

    def __enter__(self) -> Spool:
        self._staged = self.storage.stage(
            self.key, max_bytes=self.max_bytes, spool_dir=self._spool_dir
        )
        return self

    @property
    def path(self) -> Path:
        """The local file of what was received (read it only), until the block ends."""
        assert self._staged is not None, "use Spool as a context manager"
        return self._staged.path

    def receive(self, source: Readable | Iterable[bytes]) -> StoredObject:
        """Take in all of ``source``; storage goes on finishing the object in the background.

        Raises:
            TooLarge: more than ``max_bytes`` arrived (nothing is kept).
            Unavailable: the storage or the local disk failed (nothing is kept).
            Exception: whatever the source raised (nothing is kept).
        """
        assert self._staged is not None, "use Spool as a context manager"
        stored = self._staged.receive(source)
        logger.info("received %s: %d bytes, sha256 %s", self.key, stored.size, stored.sha256[:12])
        # one thread of its own: the caller reads the file while storage finishes
        finisher = ThreadPoolExecutor(1, thread_name_prefix="spool-finish")
        self._finishing = finisher.submit(self._staged.finish)
        finisher.shutdown(wait=False)
        return stored

    def finish(self) -> None:
        """Wait until the object is in storage.

        Raises:
            Unavailable: the storage failed (nothing is kept).
        """
        if self._finishing is None:
            raise RuntimeError("receive() comes before finish()")
        self._finishing.result()
        self._finished = True

    def keep(self) -> None:
        """The upload is accepted and recorded: leave the stored object in place."""
        if not self._finished:
            raise RuntimeError("finish() comes before keep()")
        self._kept = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._staged is None:
            return
        if self._finishing is not None:
            # the object cannot be removed while it is being finished: let that end first
            self._finishing.exception()
        try:
            self._staged.close(keep=self._kept)
        except Exception:  # the original error matters more; the orphan is logged
            logger.exception("could not remove refused upload %s", self.key)
