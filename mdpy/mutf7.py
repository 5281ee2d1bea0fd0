# -*- test-case-name: tests.test_mutf7 -*-
"""
Modified UTF-7 (RFC 3501 section 5.1.3): how IMAP mailbox names and the
Maildir++ folder directories (as Dovecot writes them) spell non-ASCII.
"""

import base64


def encode(text):
    """
    @return: C{text} in modified UTF-7 (RFC 3501 section 5.1.3).
    """
    out, pending = [], []

    def flush():
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&%s-" % base64.b64encode(raw).decode().rstrip("=").replace("/", ","))
            del pending[:]

    for ch in text:
        if " " <= ch <= "~":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode(text, strict=False):
    """
    @return: the text a modified UTF-7 name stands for.
    @raise ValueError: C{strict} and C{text} is not valid modified UTF-7
        (else it is returned as it is).
    """
    if "&" not in text:
        return text
    out, i = [], 0
    try:
        while i < len(text):
            if text[i] != "&":
                out.append(text[i])
                i += 1
                continue
            end = text.index("-", i)
            if end == i + 1:
                out.append("&")
            else:
                b64 = text[i + 1:end].replace(",", "/")
                raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                out.append(raw.decode("utf-16-be"))
            i = end + 1
    except (ValueError, UnicodeError):
        if strict:
            raise ValueError("not modified UTF-7: %r" % (text,))
        return text
    return "".join(out)
