# -*- test-case-name: tests.test_imap_server -*-
"""
Mailbox names on the wire and the LIST family: modified UTF-7 names
(RFC 3501 section 5.1.3) with C{/} as the hierarchy separator, LIST
patterns (section 6.3.8), and the attributes of CHILDREN (RFC 3348),
SPECIAL-USE (RFC 6154) and LIST-EXTENDED (RFC 5258).
"""

import re

from mdpy import mutf7
from mdpy.imap.mime import quoteString
from mdpy.imap.parser import ParseError, astring

SEPARATOR = "/"
SPECIAL_USE = {
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


def decodeName(token):
    """
    @return: the store name of a mailbox name argument: C{INBOX} in any case
        is C{INBOX}, a trailing separator is dropped, and modified UTF-7 is
        decoded (raw UTF-8 is taken as it is).
    @raise ParseError: not a string, or invalid modified UTF-7.
    """
    raw = astring(token)
    try:
        text = raw.decode("ascii")
        ascii = True
    except UnicodeDecodeError:
        ascii = False
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("Mailbox name is not UTF-8")
    if ascii:
        try:
            text = mutf7.decode(text, strict=True)
        except ValueError:
            raise ParseError("Mailbox name is not valid modified UTF-7")
    if len(text) > 1 and text.endswith(SEPARATOR):
        text = text.rstrip(SEPARATOR)
    first, sep, rest = text.partition(SEPARATOR)
    if first.upper() == "INBOX":
        text = "INBOX" + sep + rest
    return text


def encodeName(name):
    """
    @return: a store name as a quoted modified UTF-7 mailbox name.
    """
    return quoteString(mutf7.encode(name))


def patternMatcher(reference, pattern):
    """
    @return: a function telling whether a store name matches the LIST
        C{reference} and C{pattern} (already decoded), where C{*} matches
        anything and C{%} anything but the separator.
    """
    full = reference + pattern if reference and not pattern.startswith(SEPARATOR) else pattern
    regex = []
    for ch in full:
        if ch == "*":
            regex.append(".*")
        elif ch == "%":
            regex.append("[^/]*")
        else:
            regex.append(re.escape(ch))
    text = "".join(regex)
    inbox = re.compile("(?i:INBOX)" + text[len("INBOX"):] + r"\Z") if full[:5].upper() == "INBOX" else None
    compiled = re.compile(text + r"\Z", re.DOTALL)

    def matches(name):
        if inbox is not None and inbox.match(name):
            return True
        return compiled.match(name) is not None

    return matches


class Listing:
    """
    The folders of an account as LIST sees them: existing ones, and parents
    that exist only as the prefix of another (C{\\Noselect}).
    """

    def __init__(self, names, subscribed=()):
        self.names = list(names)
        self.existing = set(self.names)
        self.subscribed = set(subscribed)
        self.parents = set()
        for name in list(self.existing) + list(self.subscribed):
            levels = name.split(SEPARATOR)
            for depth in range(1, len(levels)):
                self.parents.add(SEPARATOR.join(levels[:depth]))
        self.implied = sorted(self.parents - self.existing)

    def hasChildren(self, name):
        prefix = name + SEPARATOR
        return any(other.startswith(prefix) for other in self.existing)

    def attributes(self, name, specialUse=True, subscribedFlag=False):
        """
        @return: the LIST attributes of C{name}.
        """
        attrs = []
        if name not in self.existing:
            attrs.append("\\NonExistent" if not self.hasChildren(name) else "\\Noselect")
        attrs.append("\\HasChildren" if self.hasChildren(name) else "\\HasNoChildren")
        if specialUse and name in SPECIAL_USE and name in self.existing:
            attrs.append(SPECIAL_USE[name])
        if subscribedFlag and name in self.subscribed:
            attrs.append("\\Subscribed")
        return attrs


def listLine(verb, attributes, name, extra=b""):
    """
    @return: one C{* LIST (attrs) "/" name} response.
    """
    return b"* %s (%s) \"/\" %s%s\r\n" % (
        verb, " ".join(attributes).encode("ascii"), encodeName(name), extra,
    )
