"""The archive versions a replica holds: loading a published version, and the poller that
picks up a new ``CURRENT`` (a request sees the old set of versions or the new one)."""

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


# (scores [k], rows [k]) of one query, or None: the archive has another dimension.
Found = tuple[np.ndarray, np.ndarray] | None


@dataclasses.dataclass
class Loaded:
    version: str
    archive: Any  # rsir.retrieval.archive.Archive
    searcher: Any  # ExactSearcher
    owner_texts: dict[str, list[str]]


def load_version(target: str, root: str) -> Loaded:
    from rsir.retrieval.archive import load_archive
    from rsir.retrieval.topk import ExactSearcher

    archive = load_archive(root)
    # Arrow hands out read-only memory, which the searcher would copy (51 MB for 100k x
    # 128) on every query; one writable copy per loaded version instead.
    archive.vectors = np.array(archive.vectors, dtype=np.float32)
    owner_texts: dict[str, list[str]] = {}
    if target == "captions":
        for owner, text in zip(archive.metadata.get("owner", []), archive.metadata.get("text", [])):
            owner_texts.setdefault(str(owner), []).append(str(text))
    return Loaded(archive.version, archive, ExactSearcher(archive.vectors), owner_texts)


class ArchiveSet:
    """The loaded version of each target's archive root. :meth:`poll_once` loads a newly
    published version and swaps it in; a version that fails to load is logged once and
    the one held keeps serving."""

    def __init__(self, roots: dict[str, str]) -> None:
        self.roots = roots
        self.archives: dict[str, Loaded] = {}
        self.swaps = 0
        self._warned: set[tuple[str, str]] = set()

    def poll_once(self) -> None:
        from rsir.retrieval.archive import current_version

        for target, root in self.roots.items():
            try:
                version = current_version(root)
                loaded = self.archives.get(target)
                if loaded is not None and loaded.version == version:
                    continue
                new = load_version(target, root)
            except Exception as err:  # noqa: BLE001 - keep serving the version we have
                if (target, str(err)) not in self._warned:
                    self._warned.add((target, str(err)))
                    log.warning("archive %s at %s not loaded: %s", target, root, err)
                continue
            # One reference assignment: a request sees the old dict or the new one.
            self.archives = {**self.archives, target: new}
            self.swaps += 1
            log.info("archive %s: now version %s (%d rows)", target, new.version, len(new.archive))


class Poller:
    """Calls ``fn`` every ``interval_s`` on a daemon thread until :meth:`stop`."""

    def __init__(self, fn: Callable[[], None], interval_s: float, name: str) -> None:
        self._fn, self._interval = fn, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._fn()

    def stop(self) -> None:
        self._stop.set()
