"""
mdpy inside another Twisted application: an SMTP listener on a free
loopback port, delivering to an in-memory store, beside whatever else the
application's reactor runs.  Run it: C{python embed.py} sends itself one message with
L{smtplib}, prints it as stored, and stops.
"""

import os
import smtplib
import sys
import tempfile

from twisted.internet import defer, endpoints, task, threads

from mdpy.delivery.pipeline import DeliveryPipeline
from mdpy.backends.files.directory import SQLiteDirectory
from mdpy.smtp.server import SMTPFactory
from mdpy.backends.memory import MemoryStore


def mailFactory(reactor, dataDir):
    """
    @return: an SMTP factory delivering to joe@example.test, and its store.
    """
    directory = SQLiteDirectory(os.path.join(dataDir, "directory.sqlite"))
    if not directory.hasDomain("example.test"):
        directory.addDomain("example.test")
        directory.addUser("joe@example.test", "a password")
    store = MemoryStore()
    pipeline = DeliveryPipeline(directory, store, spoolDir=dataDir)
    return SMTPFactory("mx.example.test", pipeline, clock=reactor), store


def send(port):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("ann@remote.example", ["joe@example.test"],
                        b"Subject: hello\r\n\r\nfrom smtplib\r\n")


async def main(reactor):
    with tempfile.TemporaryDirectory() as dataDir:
        factory, store = mailFactory(reactor, dataDir)
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        listening = await endpoint.listen(factory)
        try:
            await threads.deferToThread(send, listening.getHost().port)
        finally:
            await listening.stopListening()
        [message] = store.openMailbox("joe@example.test").messages()
        sys.stdout.write((await message.read()).decode("utf-8"))


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
