# -*- test-case-name: tests.test_tap -*-
"""
mdpy's logger: Twisted's L{twisted.logger.Logger}, with events below the
configured C{[server] log_level} dropped before anything is formatted.
"""

from twisted.logger import Logger as _TwistedLogger, LogLevel

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


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
