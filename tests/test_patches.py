"""sync_server.node.patches (and wire.raw_writer): on the pinned Hypercorn / wsproto / h11 / uvicorn every guard
passes and every patch is active. An upgrade that changes the patched internals fails here, instead of
switching a patch off in silence; a guard that fails logs a WARNING and leaves the library alone."""

from __future__ import annotations

import asyncio

import structlog
from hypercorn.config import Config
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import Data
from hypercorn.protocol.h11 import H11Protocol
from wsproto import frame_protocol

from sync_server.node import patches
from sync_server.sync import wire


def test_every_guard_passes_and_every_patch_is_active_on_the_pinned_versions():
    assert {p.name for p in patches.PATCHES} == {
        "decline_permessage_deflate",
        "coalesce_response_head",
        "fast_unmasking",
        "status_reason_phrase",
        "websocket_intake",
        "websocket_takeover",
        "front_door",
        "http1_httptools",
    }
    for patch in patches.PATCHES:
        assert patch.guard() is None, (patch.name, patch.guard())
    with structlog.testing.capture_logs() as logs:
        assert patches.apply_all() == {p.name: True for p in patches.PATCHES}
        assert patches.apply_all() == {p.name: True for p in patches.PATCHES}  # idempotent
    assert logs == []
    assert all(p.active() for p in patches.PATCHES)
    assert H11Protocol.coalesces_response_head
    assert frame_protocol.XorMaskerSimple.unmasks_words


def test_a_failing_guard_leaves_the_patch_off_with_a_warning():
    installed = []
    broken = patches.Patch(
        "probe", "hypercorn", lambda: "internals changed", lambda: installed.append(1), lambda: False
    )
    with structlog.testing.capture_logs() as logs:
        assert patches.apply(broken) is False
    assert installed == []
    [line] = logs
    assert line["log_level"] == "warning" and line["event"] == "third_party_patch_off"
    assert line["patch"] == "probe" and line["reason"] == "internals changed" and line["version"][0].isdigit()


def test_declined_deflate_answers_an_offer_without_the_extension():
    patches.apply_all()
    offer = [
        (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"sec-websocket-version", b"13"),
        (b"upgrade", b"websocket"),
        (b"connection", b"upgrade"),
        (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
    ]
    handshake = ws_stream.Handshake(offer, "1.1")
    assert handshake.is_valid()
    status, headers, _conn = handshake.accept(None, [])
    assert status == 101
    assert b"sec-websocket-extensions" not in dict(headers)


def test_raw_writer_writes_into_a_real_hypercorn_websocket_stream():
    sent = []

    async def send(event):
        sent.append(event)

    async def main():
        stream = ws_stream.WSStream(None, Config(), None, None, False, None, None, send, 7)
        with structlog.testing.capture_logs() as logs:
            write = wire.raw_writer({"http_version": "1.1"}, stream.app_send)
        assert write is not None and logs == []
        stream.state = ws_stream.ASGIWebsocketState.CONNECTED
        await write(b"\x82\x01x")
        assert sent == [Data(stream_id=7, data=b"\x82\x01x")]
        stream.closed = True
        try:
            await write(b"\x82\x01y")
        except ConnectionError:
            pass
        else:
            raise AssertionError("a closed stream took a write")
        assert wire.raw_writer({"http_version": "2"}, stream.app_send) is None

    asyncio.run(main())
