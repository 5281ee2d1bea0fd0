"""
The backends every contract suite runs against: C{backend} is each of
them in turn, built so that its work runs at once (the files backend before
its thread pool starts, without group commit).
"""

import pytest

from mdpy import backends
from mdpy.config import Config


class UnstartedPool:
    """
    A thread pool that never starts: the files backend runs its work at
    once, on the calling thread, as it does while the server is built.
    """

    started = False


def configFor(tmp_path, backend, text=""):
    """
    @return: the L{Config} of a server on C{tmp_path} with C{[server]
        backend} C{backend}, and C{text} added.
    """
    path = tmp_path / "mdpy.ini"
    path.write_text(
        "[server]\nhostname = mx.example.com\ndomain = example.com\ndata_dir = %s\nbackend = %s\n%s"
        % (tmp_path / "data", backend, text)
    )
    return Config.load(str(path))


def makeBackend(name, tmp_path):
    if name == "files":
        from mdpy.backends.files import FilesBackend

        return FilesBackend(str(tmp_path / "data"), threadPool=UnstartedPool(), groupCommit=False)
    return backends.load(name, configFor(tmp_path, name))


@pytest.fixture(params=["files", "memory"])
def backend(request, tmp_path):
    backend = makeBackend(request.param, tmp_path)
    yield backend
    backend.close()
