"""The server side of the cold-load timeline (bench/RESULTS.md, issue 20, 2026-12-03): put this
directory on PYTHONPATH for a bench run (`PYTHONPATH=bench/cold_timeline`, or after another tree:
`PYTHONPATH=/tmp/cold-main:bench/cold_timeline`) and the server writes `TL <monotonic ms> <event>
<details>` lines to its log (stderr). It wraps the load path's functions from outside the tree once
`sync_server.node.app` is imported, so it measures main's tree and this one alike; every wrapper
checks the function exists. Not part of the product; WEBHOST_TIMELINE=0 turns it off. Merge with
the client's lines (BENCH_TIMELINE=1) by `python bench/cold_timeline/merge.py LOGS...`."""

import importlib.abc
import importlib.machinery
import os
import sys
import time


def tl(event, **details):
    extra = " ".join(f"{k}={v}" for k, v in details.items())
    sys.stderr.write(f"TL {time.monotonic() * 1000:.3f} {event} {extra}\n")
    sys.stderr.flush()


def _wrap(owner, name, make):
    original = getattr(owner, name, None)
    if original is not None:
        setattr(owner, name, make(original))


def install():
    import asyncpg.connection

    from storage import documents
    from sync_server.extensions import doc_rebuild
    from sync_server.sync import connection, endpoint, rooms

    def take_over(original):
        def wrapped(self, transport, head):
            tl("upgrade_taken_over")
            return original(self, transport, head)

        return wrapped

    def get(original):
        async def wrapped(self, *args, **kwargs):
            tl("authenticated_room_get")
            room = await original(self, *args, **kwargs)
            tl("room_got")
            return room

        return wrapped

    def load_pieces(original):
        async def wrapped(*args, **kwargs):
            tl("load_started")
            async for piece in original(*args, **kwargs):
                tl("piece_fetched", rows=len(piece.updates), bytes=sum(map(len, piece.updates)))
                yield piece

        return wrapped

    def absorb(original):
        async def wrapped(self, rows, *args, **kwargs):
            tl("replay_piece_start", rows=len(rows))
            await original(self, rows, *args, **kwargs)
            tl("replay_piece_end")

        return wrapped

    def feed(original):  # main's worker-thread feed (one call per piece there)
        def wrapped(self, rows):
            big = len(rows) > 1500
            if big:
                tl("feed_start", rows=len(rows))
            original(self, rows)
            if big:
                tl("feed_end")

        return wrapped

    def join(original):
        def wrapped(self, conn):
            original(self, conn)
            tl("joined")

        return wrapped

    def loading(original):
        def wrapped(self, doc):
            original(self, doc)
            tl("preview_sent")

        return wrapped

    def enqueue(original):
        def wrapped(self, frame, wire=None):
            if len(frame) > 1000:
                tl("enqueue", bytes=len(frame), type=frame[1])
            return original(self, frame, wire)

        return wrapped

    def fetchrow(original):
        async def wrapped(self, query, *args, **kwargs):
            tl("fetchrow_start", q=query[:30].replace(" ", "_"))
            row = await original(self, query, *args, **kwargs)
            tl("fetchrow_end")
            return row

        return wrapped

    _wrap(endpoint.SyncEndpoint, "take_over", take_over)
    _wrap(rooms.RoomRegistry, "get", get)
    _wrap(documents, "load_pieces", load_pieces)
    _wrap(doc_rebuild.Replay, "absorb", absorb)
    _wrap(doc_rebuild.Replay, "feed", feed)
    _wrap(rooms.Room, "join", join)
    _wrap(rooms.Room, "loading", loading)
    _wrap(connection.Connection, "enqueue", enqueue)
    _wrap(asyncpg.connection.Connection, "fetchrow", fetchrow)


class _AfterApp(importlib.abc.MetaPathFinder):
    """Installs the wrappers once the node's composition root is imported (everything is loaded)."""

    def find_spec(self, name, path, target=None):
        if name != "sync_server.node.app":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_install(module):
            exec_module(module)
            install()

        spec.loader.exec_module = exec_then_install
        return spec


if os.environ.get("WEBHOST_TIMELINE") != "0":
    sys.meta_path.insert(0, _AfterApp())
