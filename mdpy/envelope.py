# -*- test-case-name: tests.test_smtp_server -*-
"""
The facts about one message that travel with it but are not in it.
"""

import base64
import itertools
import os
import time

_counter = itertools.count(int.from_bytes(os.urandom(3), "big"))


def newMessageId():
    """
    @return: a short, unique, roughly sortable identifier for logs and queue
        files: milliseconds since the epoch, then a counter that starts at a
        random value in each process.
    """
    stamp = int(time.time() * 1000).to_bytes(6, "big")
    serial = (next(_counter) & 0xFFFFFFFF).to_bytes(4, "big")
    return base64.b32encode(stamp + serial).decode("ascii").rstrip("=")


class Envelope:
    """
    @ivar sender: the reverse-path without brackets; C{""} for the null sender.
    @ivar helo: what the client said in HELO/EHLO.
    @ivar clientAddress: the client's IP address as text.
    @ivar clientName: the client's host name if known, else L{None}.
    @ivar authenticatedAs: the user a client authenticated as, or L{None}.
    @ivar protocol: the RFC 3848 protocol name (C{ESMTPSA}, C{POP3}, ...).
    @ivar size: the size the client declared, or L{None}.
    @ivar body: C{"7BIT"}, C{"8BITMIME"} or L{None}.
    @ivar smtputf8: whether the message uses RFC 6531 UTF-8.
    @ivar messageId: the identifier used in logs and Received headers.
    @ivar receivedAt: seconds since the epoch.
    @ivar trusted: whether the server itself made the message (a delivery
        status notification), so it may go to remote recipients without an
        authenticated sender.
    """

    def __init__(
        self,
        sender,
        helo=None,
        clientAddress=None,
        clientName=None,
        authenticatedAs=None,
        protocol="ESMTP",
        size=None,
        body=None,
        smtputf8=False,
        messageId=None,
        receivedAt=None,
        trusted=False,
        deliveryKey=None,
        again=False,
    ):
        self.sender = sender
        self.helo = helo
        self.clientAddress = clientAddress
        self.clientName = clientName
        self.authenticatedAs = authenticatedAs
        self.protocol = protocol
        self.size = size
        self.body = body
        self.smtputf8 = smtputf8
        self.messageId = messageId or newMessageId()
        self.receivedAt = time.time() if receivedAt is None else receivedAt
        self.trusted = trusted
        self.deliveryKey = deliveryKey
        self.again = again

    def __repr__(self):
        return "<Envelope %s from %r>" % (self.messageId, self.sender)
