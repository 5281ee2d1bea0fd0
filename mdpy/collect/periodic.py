# -*- test-case-name: tests.test_domainpop_service,tests.test_odmr_customer -*-
"""
Work run on an interval: DomainPOP and MultiPOP collections, and the ODMR
customer's sessions (L{mdpy.odmr.customer}).
"""

from twisted.application import service

from mdpy.logs import Logger

log = Logger()


class CycleBusy(Exception):
    """
    Another process (or cycle) is collecting this source now.
    """


class PeriodicCollection(service.Service):
    """
    Runs C{runNow()} every C{interval} seconds, the first time shortly after
    the start, and C{close()} once stopped.  Subclasses say what one run
    is.
    """

    def __init__(self, interval, clock=None, firstDelay=5):
        if clock is None:
            from twisted.internet import reactor as clock
        self.interval = interval
        self.clock = clock
        self.firstDelay = firstDelay
        self._call = None
        self._current = None

    def runNow(self):
        """
        Run once now (also C{mdpy domainpop run} while the server runs).

        @return: a L{Deferred} firing with what the run reports.
        """
        raise NotImplementedError()

    def close(self):
        """
        Release what the runs hold open.
        """

    def startService(self):
        service.Service.startService(self)
        self._call = self.clock.callLater(self.firstDelay, self._run)

    def _run(self):
        self._call = None
        d = self._current = self.runNow()
        d.addErrback(lambda f: f.trap(CycleBusy))
        d.addErrback(lambda f: log.failure("{name}: run failed", f, name=self.name or "collection"))

        def again(_):
            self._current = None
            if self.running:
                self._call = self.clock.callLater(self.interval, self._run)

        d.addBoth(again)

    def stopService(self):
        service.Service.stopService(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        current, self._current = self._current, None
        if current is None:
            self.close()
            return None
        return current.addBoth(lambda _: self.close())
