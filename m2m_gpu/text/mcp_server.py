"""A Model Context Protocol server over stdio exposing a TextMemory:
``remember``, ``recall``, ``feedback`` and ``forget`` (``m2m-gpu mcp --path DIR``).

It uses the ``mcp`` package (2.x: ``MCPServer``); the memory is durable on ``--path`` and
closed when the server stops. Every tool returns JSON-able data.
"""

from __future__ import annotations

from typing import Any


def build(memory) -> Any:
    """An MCPServer whose tools act on ``memory`` (a TextMemory)."""
    try:
        from mcp.server.mcpserver import MCPServer
    except ImportError as exc:
        raise ImportError("m2m-gpu mcp needs the mcp package: pip install 'm2m-gpu[mcp]'"
                          ) from exc
    server = MCPServer("m2m-gpu memory")

    @server.tool()
    def remember(texts: list[str], metadata: list[dict] | None = None) -> list[str]:
        """Store texts in the memory; returns their ids."""
        return [str(i) for i in memory.store(texts, metadata=metadata)]

    @server.tool()
    def recall(query: str, k: int = 5, mode: str = "hybrid") -> dict:
        """The k most relevant memories for the query, and how confident the memory is
        that it knows about it (0 to 1)."""
        hits = memory.search(query, k=k, mode=mode)
        return {"confidence": memory.confidence(query),
                "hits": [{"id": str(h["id"]), "text": h["text"], "score": h["score"],
                          "metadata": h["metadata"]} for h in hits]}

    @server.tool()
    def feedback(query: str, relevant: list[str] | None = None,
                 irrelevant: list[str] | None = None) -> int:
        """Tell the memory which recalled ids were relevant to the query (and which were
        not): later recalls follow."""
        return memory.feedback(query, relevant=_ids(memory, relevant),
                               irrelevant=_ids(memory, irrelevant))

    @server.tool()
    def forget(ids: list[str]) -> int:
        """Delete memories by id; returns how many were removed."""
        return memory.forget(_ids(memory, ids))

    return server


def _ids(memory, ids) -> list:
    """Ids come back as strings over JSON; generated ids are ints in the store."""
    store, out = memory.splats, []
    for i in ids or []:
        if store is not None and isinstance(i, str) and i not in store and \
                i.lstrip("-").isdigit() and int(i) in store:
            i = int(i)
        out.append(i)
    return out
