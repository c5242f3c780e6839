"""common.ostext and the packing backstop: OS strings that are not UTF-8."""

from __future__ import annotations

import msgpack

from common import protocol
from common.ostext import os_text

# What Python makes of the 15 bytes the kernel keeps of "éééééééé".
CUT_NAME = ("é" * 8).encode()[:15].decode("utf-8", "surrogateescape")


def test_valid_text_is_returned_as_is():
    for text in ("firefox", "ééé", "日本語", "", "a\x1b[2Jb"):
        assert os_text(text) is text


def test_undecodable_bytes_become_replacement_characters():
    assert CUT_NAME.endswith("\udcc3")
    assert os_text(CUT_NAME) == "ééééééé\ufffd"
    assert os_text(b"a\xffb\xfe".decode("utf-8", "surrogateescape")) == "a\ufffdb\ufffd"
    assert os_text("x\ud800y") == "x\ufffdy"  # a surrogate not made by surrogateescape
    for text in (CUT_NAME, "x\ud800y"):
        os_text(text).encode("utf-8")  # never raises


def test_a_reply_with_a_surrogate_still_packs():
    # Belt and braces behind os_text: one bad string never fails a whole reply.
    packed = protocol.pack_response(1, None, {"rows": [{"process_name": CUT_NAME}, {"process_name": "ok"}]})
    msg = msgpack.unpackb(packed, raw=False)
    assert [r["process_name"] for r in msg[3]["rows"]] == ["ééééééé?", "ok"]
