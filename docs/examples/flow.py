"""
A message through the delivery pipeline, as every protocol hands it over:
start a transaction with the envelope, add the recipients, write the
message, commit.
"""

import os

from twisted.internet import defer

from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.envelope import Envelope
from mdpy.backends.memory import MemoryStore


def buildPipeline(dataDir):
    """
    @return: a pipeline delivering to one user and an alias of it, in memory.
    """
    directory = SQLiteDirectory(os.path.join(dataDir, "directory.sqlite"))
    directory.addDomain("example.test")
    directory.addUser("joe@example.test", "a password")
    directory.addAlias("sales@example.test", ["joe@example.test"])
    return DeliveryPipeline(directory, MemoryStore(), spoolDir=dataDir)


async def deliver(pipeline, sender, recipients, message):
    """
    Hand one message to C{pipeline}, as the SMTP server does.  Each step
    may return its result or a L{defer.Deferred} of it.
    """
    delivery = await defer.maybeDeferred(pipeline.startDelivery, Envelope(sender))
    for recipient in recipients:
        await defer.maybeDeferred(delivery.addRecipient, recipient)
    delivery.write(message)
    await defer.maybeDeferred(delivery.commit)  # once every copy is durable


async def inbox(pipeline, account):
    """
    @return: the messages in C{account}'s INBOX.
    """
    mailbox = await defer.maybeDeferred(pipeline.store.openMailbox, account)
    return [await stored.read() for stored in mailbox.messages()]
