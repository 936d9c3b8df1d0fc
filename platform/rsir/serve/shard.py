"""The search shard deployment: one block of rows of every archive, answering batches of
queries for it (:func:`rsir.serve.search.answer`), new versions loaded as they are
published. Serve restarts a replica that dies; the ingress names the shard as missing
meanwhile."""

import asyncio
from typing import Any

from ray import serve

from rsir.serve.archives import Poller, ShardParts
from rsir.serve.search import Query, answer


@serve.deployment
class SearchShard:
    def __init__(self, roots: dict[str, str], shard: int, shards: int, exact_max: int,
                 poll_interval_s: float) -> None:
        self.shard, self.exact_max = shard, exact_max
        self.parts = ShardParts(roots, shard, shards)
        self.parts.poll_once()
        self._poller = Poller(self.parts.poll_once, poll_interval_s, f"shard-{shard}-poller")

    async def search(self, queries: list[Query]) -> dict[str, Any]:
        from rsir.retrieval.index import RawVectorsMissing

        # In a thread: the replica's event loop keeps taking requests and health checks.
        try:
            results = await asyncio.to_thread(answer, self.parts, queries, self.exact_max)
        except RawVectorsMissing as err:  # the archive's, not the shard's: the client hears it
            return {"shard": self.shard, "error": str(err), "held": self.parts.held()}
        return {"shard": self.shard, "results": results, "held": self.parts.held()}

    async def held(self) -> dict[str, Any]:
        return {"shard": self.shard, "held": self.parts.held()}

    def __del__(self) -> None:
        poller = getattr(self, "_poller", None)
        if poller is not None:
            poller.stop()
