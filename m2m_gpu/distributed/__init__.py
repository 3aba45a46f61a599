"""A sharded store on Ray: N actors each owning one durable SplatStore
(``pip install 'm2m-gpu[ray]'``)."""

from .placement import id_order, shard_of
from .sharded import ShardedStore, ShardUnavailableError

__all__ = ["ShardUnavailableError", "ShardedStore", "id_order", "shard_of"]
