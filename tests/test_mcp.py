"""`m2m-gpu mcp` as a real MCP server over stdio, driven by the mcp package's own client:
tools listed, remember / recall / feedback / forget, and the memory durable afterwards."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

pytest.importorskip("mcp")

import m2m_gpu  # noqa: E402


async def _session(path, steps):
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "m2m_gpu.cli", "mcp", "--path", str(path),
                                         "--encoder", "hashed", "--backend", "cpu"])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await steps(session)


def _payload(result):
    assert not result.is_error, result
    if result.structured_content is not None:
        data = result.structured_content
        return data.get("result", data) if isinstance(data, dict) else data
    return json.loads(result.content[0].text)


def test_mcp_server_over_stdio(tmp_path):
    path = tmp_path / "mem"

    async def steps(s):
        names = {t.name for t in (await s.list_tools()).tools}
        assert {"remember", "recall", "feedback", "forget"} <= names
        ids = _payload(await s.call_tool("remember", {"texts": [
            "the cat sat on the mat", "interest rates rose at the central bank",
            "gpu kernels for vector search"]}))
        got = _payload(await s.call_tool("recall", {"query": "central bank rates", "k": 2}))
        assert got["hits"][0]["id"] == ids[1] and 0 < got["confidence"] < 1
        assert _payload(await s.call_tool("feedback", {"query": "central bank rates",
                                                       "relevant": [ids[1]]})) == 1
        assert _payload(await s.call_tool("forget", {"ids": [ids[0]]})) == 1
        return ids

    ids = asyncio.run(asyncio.wait_for(_session(path, steps), 120))
    again = m2m_gpu.TextMemory(path=path, encoder=m2m_gpu.text.hashed_encoder())
    assert sorted(map(str, again.splats.ids())) == sorted(ids[1:])
    assert again.search("gpu vector", k=1)[0]["text"] == "gpu kernels for vector search"
    again.close()
