# -*- test-case-name: tests.test_logs -*-
"""
mdpy's logger: Twisted's L{twisted.logger.Logger}, with events below the
configured C{[server] log_level} dropped before anything is formatted; and
the log C{twistd mdpy} writes, through L{quiet}.
"""

import os
import re

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    Logger as _TwistedLogger,
    LogLevel,
    PredicateResult,
    formatEvent,
)

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

LOG_FILE_MODE = 0o640

# What Twisted says at info of each connection and each DNS query (one UDP
# port per query), with the reprs of its objects: not for administrators.
_CHATTER = re.compile(
    r"(?:Starting|Stopping) (?:factory|protocol) <.* object at 0x[0-9a-f]+>"
    r"|DNSDatagramProtocol starting on \d+"
    r"|\(UDP Port \d+ Closed\)",
)


class Logger(_TwistedLogger):
    """
    A L{twisted.logger.Logger} that honours L{setLevel}.
    """

    minimum = LogLevel.info

    def emit(self, level, format=None, **kwargs):
        if level < Logger.minimum:
            return
        _TwistedLogger.emit(self, level, format, **kwargs)


def setLevel(name):
    """
    Write only events at level C{name} (C{debug}, C{info}, C{warn},
    C{error}) or more severe.
    """
    Logger.minimum = _LEVELS[name]


def quiet(event):
    """
    The filter of the server's log: events below L{setLevel}'s level, from
    Twisted as from mdpy, and Twisted's chatter below warn (a line with an
    object's repr for each factory, protocol and DNS query) are left out.

    @return: a L{PredicateResult}.
    """
    level = event.get("log_level", LogLevel.info)
    if level < Logger.minimum:
        return PredicateResult.no
    if level < LogLevel.warn and not event.get("log_namespace", "").startswith("mdpy."):
        if _CHATTER.fullmatch(formatEvent(event)):
            return PredicateResult.no
    return PredicateResult.maybe


def logFilePath(twistdOptions):
    """
    @param twistdOptions: the options of C{twistd} itself.
    @return: the file C{twistd} logs to (C{--logfile}, or C{twistd.log} for
        a daemon), or L{None} when it logs to standard output, syslog or
        its own C{--logger}.
    """
    if twistdOptions.get("logger") or twistdOptions.get("syslog"):
        return None
    path = twistdOptions.get("logfile") or ""
    if path == "-" or (not path and twistdOptions.get("nodaemon")):
        return None
    return path or "twistd.log"


def restrictLogFile(path):
    """
    Make the log file C{path} readable by its owner and group only
    (L{LOG_FILE_MODE} at most), creating it if need be: the log names
    senders, recipients and logins.  Twisted's L{twisted.python.logfile}
    keeps the mode of a file it finds for the files it makes when it
    rotates, so the rotated logs stay as private.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & ~LOG_FILE_MODE:
            os.fchmod(fd, mode & LOG_FILE_MODE)
    finally:
        os.close(fd)


def logThroughFilter(application, twistdOptions):
    """
    Make C{twistd} write its log through L{quiet}, to the file (made
    private by L{restrictLogFile}), standard output or syslog its options
    name: the observer C{twistd} would make becomes the application's
    L{ILogObserver}, behind the filter.  Called before C{twistd} starts
    logging; nothing is done when its C{--logger} is used.

    @param application: the L{twisted.application.service.Application}.
    @param twistdOptions: the options of C{twistd} itself.
    """
    if twistdOptions.get("logger"):
        return
    from twisted.scripts._twistd_unix import UnixAppLogger

    path = logFilePath(twistdOptions)
    if path is not None:
        restrictLogFile(path)
    observer = UnixAppLogger(twistdOptions)._getLogObserver()
    if not ILogObserver.providedBy(observer):
        observer = LegacyLogObserverWrapper(observer)
    application.setComponent(ILogObserver, FilteringLogObserver(observer, [quiet]))
