# -*- test-case-name: tests.test_workers -*-
"""
A worker process of C{[server] workers = N}, started by its supervisor
(L{mdpy.tap.supervisor}) as C{python -m mdpy.tap.worker}: it builds the
listeners of the configuration on the listening sockets it inherited,
serves them as a secondary of the data directory (it hands the mail it
queues to the primary), writes its log as JSON records on its standard
output for the supervisor, and stops on SIGTERM or when the supervisor is
gone (it ignores SIGINT, which a terminal's Ctrl-C sends to every
process of the group: the supervisor stops it).
"""

import os
import signal
import socket
import sys

from twisted.internet import error
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import FilteringLogObserver, formatEvent, globalLogBeginner, jsonFileLogObserver
from twisted.python import usage
from zope.interface import implementer

from mdpy.dualstack import OneAtATimePort
from mdpy.logs import Logger, quiet
from mdpy.tap.loadboard import LoadBoard

log = Logger()

_FAMILIES = {"4": socket.AF_INET, "6": socket.AF_INET6}


class WorkerOptions(usage.Options):
    synopsis = "--number N [--config PATH] [--port-offset N] --listener NAME=FD:FAMILY ..."
    optParameters = [
        ["config", "c", None, "The INI configuration file; default: the embedded one."],
        ["port-offset", None, 0, "The supervisor's --port-offset.", int],
        ["number", None, 1, "This worker's number, for the log.", int],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self.listeners = {}
        self.board = None

    def opt_load_board(self, value):
        """
        FD:SLOT:COUNT: the workers' load board, inherited as descriptor
        FD, and this worker's slot on it (see mdpy.tap.loadboard).
        """
        try:
            self.board = LoadBoard.fromArgument(value)
        except (ValueError, OSError) as e:
            raise usage.UsageError("--load-board takes FD:SLOT:COUNT of a board: %s" % (e,))

    def opt_listener(self, value):
        """
        NAME=FD:FAMILY: a listening socket of the listener NAME, inherited
        as descriptor FD, of family 4 or 6; repeated for each.
        """
        name, _, where = value.partition("=")
        fd, _, family = where.partition(":")
        if not name or not fd.isdigit() or family not in _FAMILIES:
            raise usage.UsageError("--listener takes NAME=FD:4 or NAME=FD:6, not %r" % (value,))
        self.listeners.setdefault(name, []).append((int(fd), _FAMILIES[family]))


@implementer(IReadDescriptor)
class SupervisorWatch:
    """
    Reads the standard input, a pipe from the supervisor that it never
    writes to: its end means the supervisor is gone.
    """

    def __init__(self, fd, gone):
        self.fd = fd
        self.gone = gone

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return "supervisor"

    def doRead(self):
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            return error.ConnectionDone()
        return None

    def connectionLost(self, reason):
        self.gone()


def withTracebackText(observer):
    """
    @return: an observer that passes each event to C{observer}, one that
        carries a failure with its traceback in its text instead: JSON
        keeps a failure's traceback but not its exception's value.
    """

    def observe(event):
        failure = event.get("log_failure")
        if failure is not None:
            event = dict(event, log_format="{log_text}",
                         log_text="%s\n%s" % (formatEvent(event), failure.getTraceback().rstrip("\n")))
            del event["log_failure"]
        observer(event)

    return observe


def main(argv=None, reactor=None):
    """
    Run a worker until SIGTERM or until its supervisor is gone.
    """
    options = WorkerOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        raise SystemExit("mdpy worker: %s" % (e,))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(withTracebackText(jsonFileLogObserver(sys.stdout)), [quiet])]
    )
    if reactor is None:
        from twisted.internet import reactor
    from mdpy.config import Config, ConfigError
    from mdpy.reload import installReloadSignal
    from mdpy.tap import THREADS, buildService, keepLargeBlocksApart, raiseFileLimit

    # Every listening port of this worker counts its connections on the
    # board the workers share.
    OneAtATimePort.board = options.board
    try:
        config = Config.load(options["config"])
        raiseFileLimit()
        keepLargeBlocksApart()
        reactor.suggestThreadPoolSize(THREADS)
        top = buildService(config, options["port-offset"], reactor, worker=options.listeners)
        top.privilegedStartService()
    except ConfigError as e:
        log.error("worker {number}: {problem}", number=options["number"], problem=e)
        raise SystemExit(1)
    except Exception:
        log.failure("worker {number} cannot start", number=options["number"])
        raise SystemExit(1)
    installReloadSignal(top, reactor)

    def supervisorGone():
        if reactor.running:
            log.info("the supervisor has gone: stopping")
            reactor.stop()

    reactor.addReader(SupervisorWatch(0, supervisorGone))
    def start():
        # Ctrl-C in a terminal reaches every process of the group: the
        # supervisor alone stops, and stops the workers with SIGTERM.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        top.startService()
        log.info("worker {number} serves its listeners", number=options["number"])

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
