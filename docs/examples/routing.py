"""
A pipeline that routes one domain to a delivery target of its own: mail for
C{archive.test} is kept as a file per message, beside the local store, and
one commit covers both.

The target's transactions are two-phase (L{ITwoPhaseDelivery}): C{prepare}
writes and fsyncs the file under a hidden name, C{commit} renames it into
sight, C{abort} removes it.  So when the local store fails, the pipeline
aborts the prepared file and nothing of the message is kept anywhere.
"""

import os
import tempfile

from twisted.internet import defer
from zope.interface import implementer

from mdpy import errors
from mdpy.delivery.pipeline import DeliveryPipeline, Route
from mdpy.durable import fsyncDirectory
from mdpy.interfaces import IDeliveryTarget, ITwoPhaseDelivery

ARCHIVED = "archive.test"


@implementer(IDeliveryTarget)
class ArchiveTarget:
    """
    Keeps each message as C{<directory>/<message id>.eml}.
    """

    def __init__(self, directory):
        self.directory = directory

    def startDelivery(self, envelope):
        return _ArchiveDelivery(self, envelope)

    def archived(self):
        """
        @return: the names of the messages kept (not those prepared).
        """
        return sorted(name for name in os.listdir(self.directory) if not name.startswith("."))


@implementer(ITwoPhaseDelivery)
class _ArchiveDelivery:
    def __init__(self, target, envelope):
        self.target = target
        self.envelope = envelope
        self.recipients = []
        self.file = tempfile.NamedTemporaryFile(dir=target.directory, prefix=".tmp-", delete=False)

    def addRecipient(self, address):
        self.recipients.append(address)

    def write(self, data):
        self.file.write(data)

    def prepare(self):
        # Durable but invisible: written and fsynced under a hidden name.
        if not self.recipients:
            return defer.fail(errors.PermanentFailure("no recipients"))
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        except OSError as e:
            return defer.fail(errors.TemporaryFailure("cannot archive: %s" % (e.strerror,)))
        return defer.succeed(None)

    def commit(self):
        if not self.file.closed:
            d = self.prepare()
            d.addCallback(lambda _: self.commit())
            return d
        final = os.path.join(self.target.directory, self.envelope.messageId + ".eml")
        os.rename(self.file.name, final)
        fsyncDirectory(self.target.directory)
        return defer.succeed(None)

    def abort(self):
        self.file.close()
        if os.path.exists(self.file.name):
            os.remove(self.file.name)


class ArchivingPipeline(DeliveryPipeline):
    """
    The pipeline, with the recipients of L{ARCHIVED} sent to an
    L{ArchiveTarget}; every other recipient goes where it always does.
    """

    def __init__(self, archive, *args, **kwargs):
        DeliveryPipeline.__init__(self, *args, **kwargs)
        self.archiveTarget = archive

    def route(self, address, envelope):
        if address.rpartition("@")[2].lower() == ARCHIVED:
            return [Route(self.archiveTarget, address)]
        return DeliveryPipeline.route(self, address, envelope)
