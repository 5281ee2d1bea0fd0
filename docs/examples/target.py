"""
A delivery target: every committed message is written to a file of its
own in a directory, durably, before the commit fires.
"""

import os
import tempfile

from twisted.internet import defer
from zope.interface import implementer

from mdpy import errors
from mdpy.interfaces import IDelivery, IDeliveryTarget


@implementer(IDeliveryTarget)
class ArchiveTarget:
    """
    Keeps each message as C{<directory>/<message id>.eml}.
    """

    def __init__(self, directory, domains=("example.test",)):
        self.directory = directory
        self.domains = domains

    def startDelivery(self, envelope):
        return defer.succeed(_ArchiveDelivery(self, envelope))


@implementer(IDelivery)
class _ArchiveDelivery:
    def __init__(self, target, envelope):
        self.target = target
        self.envelope = envelope
        self.recipients = []
        self.file = tempfile.NamedTemporaryFile(dir=target.directory, prefix=".tmp-", delete=False)

    def addRecipient(self, address):
        if address.rpartition("@")[2].lower() not in self.target.domains:
            return defer.fail(errors.RelayDenied("not archived here"))
        self.recipients.append(address)
        return defer.succeed(None)

    def write(self, data):
        self.file.write(data)

    def commit(self):
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            final = os.path.join(self.target.directory, self.envelope.messageId + ".eml")
            os.rename(self.file.name, final)
            directory = os.open(self.target.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as e:
            self.abort()
            return defer.fail(errors.TemporaryFailure("cannot archive: %s" % (e.strerror,)))
        return defer.succeed(None)

    def abort(self):
        self.file.close()
        if os.path.exists(self.file.name):
            os.remove(self.file.name)
