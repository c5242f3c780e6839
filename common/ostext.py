"""Strings from the operating system, made into text that always encodes.

Python decodes OS bytes (process names from /proc, user names from
/etc/passwd, interface names, paths) with the filesystem encoding and the
`surrogateescape` error handler: bytes that are not UTF-8 become lone
surrogates (U+DC80..U+DCFF). Such a str cannot be encoded to UTF-8, so one
of them in a reply, a notification, a log line or the Prometheus exposition
makes that output fail. Any user can name a process so: `prctl(PR_SET_NAME)`
or an executable called `éééééééé` (the kernel keeps 15 bytes, cutting the
last character in half).

Every OS string is passed through `os_text` where it enters netmon: the
undecodable bytes become U+FFFD (the replacement character), the rest is
kept as it was.
"""

from __future__ import annotations


def os_text(value: str) -> str:
    """`value` with undecodable bytes (lone surrogates) as U+FFFD; encodes as UTF-8."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    if all(not 0xD800 <= ord(ch) <= 0xDFFF or 0xDC80 <= ord(ch) <= 0xDCFF for ch in value):
        # Only surrogateescape's escapes: give the original bytes back and
        # decode them again, each invalid sequence becoming one U+FFFD.
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    # Other lone surrogates (not from the OS decoder): replace each.
    return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)
