# -*- test-case-name: tests.test_pop3_server -*-
"""
The POP3 view of a mailbox: a numbered snapshot taken at login, deletion
marks kept in memory until QUIT, and UIDLs derived from the store's stable
message keys.  The store knows nothing of POP3; this adapter is all of it.
"""

import hashlib
import re

from twisted.internet import defer

from mdpy.errors import InvalidInput
from mdpy.mailbox import ADD, SEEN

_UIDL_OK = re.compile(rb"[\x21-\x7e]{1,70}\Z")


def uidlFor(message):
    """
    The RFC 1939 unique-id of a message: its store key (the Maildir base
    name), which never changes for the message and is never given to another
    one; a key that is too long or has characters a UIDL may not carry is
    replaced by its SHA-1, which is as stable.

    @type message: L{mdpy.interfaces.IStoredMessage}
    @return: L{bytes}, 1 to 70 printable characters.
    """
    key = message.key.encode("utf-8", "surrogateescape")
    if _UIDL_OK.match(key):
        return key
    return hashlib.sha1(key).hexdigest().encode("ascii")


class Maildrop:
    """
    A snapshot of a mailbox for one POP3 session.  Mail that arrives later is
    not in it, so message numbers never shift inside a session.

    @ivar messages: the L{mdpy.interfaces.IStoredMessage}s, message number
        C{n} at index C{n - 1}.
    """

    def __init__(self, mailbox):
        self.mailbox = mailbox
        self.messages = list(mailbox.messages())
        self.deleted = set()

    def get(self, number):
        """
        @param number: the message number as the client sent it.
        @return: the message.
        @raise InvalidInput: not a number, out of range or marked deleted;
            the message says which, for the client.
        """
        try:
            index = int(number) - 1
        except ValueError:
            raise InvalidInput("Invalid message number")
        if not number.isdigit() or not 0 <= index < len(self.messages):
            raise InvalidInput("There's no message %s." % (number,))
        if index in self.deleted:
            raise InvalidInput("Message is deleted.")
        return self.messages[index]

    def listing(self):
        """
        @return: C{(number, message)} of each message not marked deleted.
        """
        return [
            (index + 1, message)
            for index, message in enumerate(self.messages)
            if index not in self.deleted
        ]

    def stat(self):
        """
        @return: C{(count, octets)} of the messages not marked deleted.
        """
        live = self.listing()
        return len(live), sum(message.size for _, message in live)

    def delete(self, number):
        self.get(number)
        self.deleted.add(int(number) - 1)

    def reset(self):
        self.deleted.clear()

    def commit(self, retrieved=()):
        """
        Remove the messages marked deleted, durably (RFC 1939 UPDATE state),
        and flag the C{retrieved} ones that stay C{\\Seen}.  A session that
        changed nothing asks nothing of the store.

        @return: a Deferred firing once they are gone.
        """
        deleted = {self.messages[index].uid for index in self.deleted}
        seen = [
            message.uid for message in retrieved
            if message.uid not in deleted and SEEN not in message.flags
        ]
        # Added to the flags as stored now: an IMAP session may have changed
        # them since the snapshot.
        d = defer.maybeDeferred(self.mailbox.changeFlags, seen, [SEEN], ADD) if seen else defer.succeed(None)
        if deleted:
            d.addCallback(lambda ignored: self.mailbox.expunge(sorted(deleted)))
        return d
