# -*- test-case-name: tests.contract.test_backends -*-
"""
Backends: where mdpy keeps everything persistent or shared between
processes (L{mdpy.interfaces.IBackend}).  C{[server] backend} names one:

    files                  the data directory of one machine (the default;
                           L{mdpy.backends.files.FilesBackend})
    memory                 memory, for tests (L{mdpy.backends.memory.MemoryBackend})
    package.module:Class   any class with C{fromConfig(config, reactor,
                           threadPool)} returning an L{IBackend}

Nothing outside this package imports a backend module: the server
(L{mdpy.tap}) and the C{mdpy} command get theirs from L{load}.
"""

import importlib

from mdpy.errors import InvalidInput

BUILT_IN = {
    "files": "mdpy.backends.files:FilesBackend",
    "memory": "mdpy.backends.memory:MemoryBackend",
}


def backendClass(name):
    """
    @param name: C{files}, C{memory} or C{package.module:Class}.
    @return: the class it names.
    @raise InvalidInput: no such backend.
    """
    spec = BUILT_IN.get(name, name)
    moduleName, colon, className = spec.partition(":")
    if not colon or not moduleName or not className:
        raise InvalidInput(
            "unknown backend %r: files, memory or package.module:Class" % (name,)
        )
    try:
        module = importlib.import_module(moduleName)
    except ImportError as e:
        raise InvalidInput("backend %s: cannot import %s (%s)" % (name, moduleName, e)) from None
    try:
        return getattr(module, className)
    except AttributeError:
        raise InvalidInput("backend %s: %s has no %s" % (name, moduleName, className)) from None


def load(name, config, reactor=None, threadPool=None):
    """
    Build the backend C{name} for C{config}.

    @param reactor: the reactor results are delivered on.
    @param threadPool: the thread pool a backend that blocks runs its work
        in, started and stopped by the caller; L{None} for a backend used
        synchronously (the C{mdpy} command).
    @return: an L{mdpy.interfaces.IBackend}.
    @raise InvalidInput: no such backend.
    """
    return backendClass(name).fromConfig(config, reactor, threadPool)
