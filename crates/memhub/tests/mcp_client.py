"""Drive memhub with the official Python MCP SDK: initialize -> tools/list ->
tools/call for every tool, over streamable HTTP or stdio.

Usage: mcp_client.py http URL [--encoder]
       mcp_client.py stdio MEMHUB_BIN DATA_DIR [--encoder]
       mcp_client.py http-scoped URL USER_KEY FOREIGN_ID   (a `user` key for ann; FOREIGN_ID is bob's memory)
--encoder: the server has a local encoder, so generate_embedding must succeed
(without it, it must fail with a clear message).
Exits non-zero (with a message) on the first broken expectation.
"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

EXPECTED_TOOLS = {
    "store_memory", "batch_store_memories", "search_memories", "search_all_systems", "get_memory",
    "delete_memory", "list_memories", "store_reflection", "create_entity", "create_relation",
    "generate_embedding", "generate_batch_embeddings", "list_changes",
}
ENCODER = "--encoder" in sys.argv


def attr(obj, *names):
    for n in names:
        if hasattr(obj, n):
            return getattr(obj, n)
    raise AssertionError(f"{type(obj).__name__} has none of {names}")


def vec(axis):
    v = [0.01] * 384
    v[axis] = 1.0
    return v


async def call(session, name, args, expect_error=False):
    result = await session.call_tool(name, args)
    structured = attr(result, "structured_content", "structuredContent")
    is_error = attr(result, "is_error", "isError")
    assert bool(is_error) == expect_error, f"{name}: is_error={is_error}: {structured}"
    text = result.content[0].text
    assert json.loads(text) == structured, f"{name}: text content and structuredContent differ"
    return structured


async def exercise(session):
    init = await session.initialize()
    server_info = attr(init, "server_info", "serverInfo")
    assert server_info.name == "memhub", server_info

    listed = await session.list_tools()
    names = {t.name for t in listed.tools}
    assert names == EXPECTED_TOOLS, f"tools differ: {names ^ EXPECTED_TOOLS}"
    for tool in listed.tools:
        schema = attr(tool, "input_schema", "inputSchema")
        assert tool.description and len(tool.description) > 30, tool.name
        assert schema["type"] == "object" and schema["properties"], tool.name

    r = await call(session, "store_memory", {
        "memory_id": "py-1", "text": "The staging database migrates every Friday", "embedding": vec(1),
        "metadata": {"source": "py-client", "type": "session_memory", "user_id": "ann"},
    })
    assert r["status"] == "stored" and r["embedding_dim"] == 384 and r["stored_at"].endswith("+00:00"), r

    r = await call(session, "store_memory", {"memory_id": "py-bad", "text": "x", "embedding": [1.0]}, expect_error=True)
    assert r["status"] == "failed" and "384" in r["error"], r

    r = await call(session, "batch_store_memories", {"memories": [
        {"memory_id": "py-2", "text": "Invoices are sent on the first of the month", "embedding": vec(2),
         "metadata": {"source": "py-client", "type": "conversation"}},
        {"memory_id": "py-3", "text": "Friday deploys need a second reviewer", "metadata": {"source": "py-other"}},
    ]})
    assert (r["status"], r["stored"], r["failed"]) == ("completed", 2, 0), r

    r = await call(session, "search_memories", {"query": "database migration friday", "system_id": "py-client"})
    assert r["total_results"] >= 1 and r["results"][0]["memory_id"] == "py-1", r
    r = await call(session, "search_memories", {"query": "billing", "query_embedding": vec(2), "limit": 1})
    assert r["results"][0]["memory_id"] == "py-2", r

    # Threshold 0: with an encoder, similarity is cosine; the two keyword matches rank first either way.
    r = await call(session, "search_all_systems", {"query": "friday", "threshold": 0.0, "limit": 2})
    got = {x["conversation_id"] for x in r["results"]}
    assert got == {"py-1", "py-3"}, r

    r = await call(session, "get_memory", {"memory_id": "py-2"})
    assert r["memory"]["kind"] == "conversation", r
    r = await call(session, "get_memory", {"memory_id": "nope"}, expect_error=True)
    assert r["code"] == "memory_not_found", r

    r = await call(session, "list_memories", {"system_id": "py-client", "limit": 1})
    assert r["count"] == 1 and r["next_cursor"], r
    r2 = await call(session, "list_memories", {"system_id": "py-client", "limit": 1, "cursor": r["next_cursor"]})
    assert r2["memories"][0]["memory_id"] != r["memories"][0]["memory_id"], (r, r2)

    r = await call(session, "store_reflection", {"reflection_id": "py-r1", "content": "Small commits review faster",
                                                 "embedding": None, "metadata": {"source": "py-client"}})
    assert r["status"] == "stored", r
    r = await call(session, "create_entity", {"name": "memhub", "entity_type": "project", "observations": ["Rust"],
                                              "properties": {}, "metadata": {}})
    assert r["id"], r
    r = await call(session, "create_relation", {"from_entity": "memhub", "to_entity": "sqlite", "relation_type": "uses",
                                                "properties": {}, "metadata": {}})
    assert r["id"], r

    # Catch up on everything above through the change log, a page at a time.
    r = await call(session, "list_changes", {"after": 0, "limit": 3})
    assert r["count"] == 3 and not r["reset"], r
    seen = list(r["changes"])
    while True:
        r = await call(session, "list_changes", {"after": r["next_after"], "limit": 3})
        if r["count"] == 0:
            break
        seen.extend(r["changes"])
    seqs = [c["seq"] for c in seen]
    assert seqs == sorted(set(seqs)), seqs
    assert [c["memory_id"] for c in seen if c["op"] == "created"][:3] == ["py-1", "py-2", "py-3"], seen
    assert {"entity_upserted", "relation_upserted"} <= {c["op"] for c in seen}, seen
    r = await call(session, "list_changes", {"ops": ["exploded"]}, expect_error=True)
    assert r["status"] == "failed" and r.get("field", "").startswith("ops"), r

    if ENCODER:
        r = await call(session, "generate_embedding", {"text": "A man is eating food."})
        assert (r["embedding_dim"], len(r["embedding"]), r["mode"]) == (384, 384, "real"), r
        r = await call(session, "generate_batch_embeddings", {"texts": ["a", "b", "c"], "batch_size": 2})
        assert (r["count"], r["embedding_dim"], len(r["embeddings"])) == (3, 384, 3), r
    else:
        r = await call(session, "generate_embedding", {"text": "x"}, expect_error=True)
        assert "no server-side encoder" in r["error"], r

    r = await call(session, "delete_memory", {"memory_id": "py-3"})
    assert r["status"] == "deleted", r
    r = await call(session, "search_all_systems", {"query": "friday", "threshold": 0.0, "limit": 10})
    ids = [x["conversation_id"] for x in r["results"]]
    assert ids[0] == "py-1" and "py-3" not in ids, r


async def scoped(session, foreign_id):
    """A user key over a real MCP session: its writes are its own, others' memories do not exist."""
    await session.initialize()
    r = await call(session, "store_memory", {"memory_id": "ann-1", "text": "ann's scoped note about otters",
                                             "metadata": {"source": "py-client", "type": "note"}})
    assert r["status"] == "stored", r
    r = await call(session, "get_memory", {"memory_id": "ann-1"})
    assert r["memory"]["user_id"] == "ann" and r["memory"]["tenant"] == "acme", r
    r = await call(session, "store_memory", {"memory_id": "as-bob", "text": "pretending",
                                             "metadata": {"source": "py-client", "user_id": "bob"}}, expect_error=True)
    assert r["code"] == "forbidden", r
    r = await call(session, "search_memories", {"query": "otters"})
    assert {x["memory_id"] for x in r["results"]} == {"ann-1"}, r
    r = await call(session, "get_memory", {"id": foreign_id}, expect_error=True)
    assert r["code"] == "memory_not_found", r
    r = await call(session, "create_entity", {"name": "x", "entity_type": "y"}, expect_error=True)
    assert r["code"] == "forbidden", r


async def main():
    mode = sys.argv[1]
    if mode == "http-scoped":
        from mcp.shared._httpx_utils import create_mcp_http_client
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {sys.argv[3]}"}) as client:
            async with streamable_http_client(sys.argv[2], http_client=client) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await scoped(session, sys.argv[4])
        # Without credentials the session cannot even start.
        try:
            async with streamable_http_client(sys.argv[2]) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await asyncio.wait_for(session.initialize(), 20)
            raise AssertionError("initialize without credentials succeeded")
        except AssertionError:
            raise
        except BaseException as e:  # the SDK raises its own error types for a 401
            print(f"refused without credentials: {type(e).__name__}")
    elif mode == "http":
        async with streamable_http_client(sys.argv[2]) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await exercise(session)
    elif mode == "stdio":
        env = {"MEMHUB_LOG": "warn"}
        if not ENCODER:
            env["MEMHUB_EMBEDDER"] = "none"
        params = StdioServerParameters(command=sys.argv[2], args=["mcp", "--stdio", "--data-dir", sys.argv[3]], env=env)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await exercise(session)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"mcp client ({mode}): all tools ok")


if __name__ == "__main__":
    asyncio.run(main())
