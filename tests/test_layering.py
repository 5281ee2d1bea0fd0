"""
The backend boundary holds: what stores mail lives in C{mdpy/backends/}
and nothing else reaches past L{mdpy.interfaces} into it.

 - No module outside C{mdpy/backends/} imports a backend module: the
   server and the C{mdpy} command get theirs from L{mdpy.backends.load};
   L{mdpy.backends.local} (state a backend keeps in this process, which
   protocol factories take by default in tests) is not a backend.
 - No module outside C{mdpy/backends/} uses a thread pool: blocking work
   goes through the backend.  L{mdpy.tap.parts} only makes the pool it hands
   the backend.
 - No module outside C{mdpy/backends/} names the backend's files: the
   Maildir folders and index, the queue spool, the directory database.
 - No module in C{mdpy/backends/} imports a protocol package.
"""

import ast
import functools
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mdpy")
PROTOCOLS = ("smtp", "pop3", "imap", "odmr", "minger", "domainpop", "multipop")
THREAD_NAMES = {"deferToThread", "deferToThreadPool", "callInThread", "getThreadPool", "ThreadPool"}
THREAD_MODULES = ("twisted.internet.threads", "twisted.python.threadpool", "threading",
                  "concurrent.futures")
# The names of the files backend's files (see mdpy.backends.files), and the
# attributes of mdpy.datadir.DataDir that lead to them.
BACKEND_FILE_NAMES = {"cur", "new", "tmp", "msg", "env", "corrupt", "mdpy-uidlist", "mdpy-uidlist.log",
                      "dovecot-keywords", "mdpy-cache.sqlite", "mdpy-expunged"}
BACKEND_PATHS = {"mailRoot", "directoryPath"}


@functools.lru_cache(maxsize=None)
def modules():
    """
    @return: C{(path relative to mdpy/, dotted name, syntax tree)} of every
        module of mdpy.
    """
    found = []
    for folder, _, names in os.walk(ROOT):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, ROOT)
                dotted = "mdpy." + relative[:-3].replace(os.sep, ".")
                dotted = dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted
                with open(path, encoding="utf-8") as f:
                    found.append((relative, dotted, ast.parse(f.read(), path)))
    return tuple(found)


def imported(tree, dotted):
    """
    @return: every module name C{tree} (of module C{dotted}) imports, at any
        depth, with relative imports made absolute.
    """
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = dotted.split(".")[: -node.level]
                base = ".".join(parts + ([base] if base else []))
            names.append(base)
            names.extend(base + "." + alias.name for alias in node.names)
    return names


def outsideBackends():
    return [(path, dotted, tree) for path, dotted, tree in modules() if not dotted.startswith("mdpy.backends")]


def isBackendModule(name):
    return name.startswith(("mdpy.backends.files", "mdpy.backends.memory"))


def test_theModulesAreFound():
    """
    The checks below see the tree: the protocols, and the backends.
    """
    dotted = {name for _, name, _ in modules()}
    assert {"mdpy.imap.server", "mdpy.pop3.server", "mdpy.backends.files.maildir", "mdpy.tap"} <= dotted


@pytest.mark.parametrize("path, dotted, tree", outsideBackends(), ids=lambda v: v if isinstance(v, str) else "")
def test_noBackendModuleImportedOutsideBackends(path, dotted, tree):
    assert [name for name in imported(tree, dotted) if isBackendModule(name)] == []


@pytest.mark.parametrize("path, dotted, tree", outsideBackends(), ids=lambda v: v if isinstance(v, str) else "")
def test_noThreadPoolOutsideBackends(path, dotted, tree):
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used = names & THREAD_NAMES
    if dotted == "mdpy.tap.parts":
        used -= {"ThreadPool"}  # the pool it hands the backend
    assert sorted(used) == []
    modules = [name for name in imported(tree, dotted) if name.startswith(THREAD_MODULES)]
    if dotted == "mdpy.tap.parts":
        modules = [name for name in modules if name not in (
            "twisted.python.threadpool.ThreadPool", "twisted.python.threadpool",
            "mdpy.backends.threadpool.ThreadPool", "mdpy.backends.threadpool")]
    assert modules == []


@pytest.mark.parametrize("path, dotted, tree", outsideBackends(), ids=lambda v: v if isinstance(v, str) else "")
def test_noBackendFilesOutsideBackends(path, dotted, tree):
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    constants = {node.value for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    if dotted != "mdpy.datadir":  # where the layout is written down
        assert sorted(attributes & BACKEND_PATHS) == []
    assert sorted(constants & BACKEND_FILE_NAMES) == []


@pytest.mark.parametrize("package", PROTOCOLS)
def test_protocolsStartNoThreads(package):
    """
    A protocol package names no C{runInThread}: every store call returns a
    Deferred (see "Threading" in L{mdpy.interfaces}).
    """
    for path, dotted, tree in modules():
        if dotted.startswith("mdpy.%s." % (package,)):
            names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
            names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
            names |= {arg.arg for node in ast.walk(tree) if isinstance(node, ast.arguments)
                      for arg in node.args + node.kwonlyargs}
            if package not in ("domainpop", "multipop"):
                assert "runInThread" not in names, path


@pytest.mark.parametrize("path, dotted, tree",
                         [m for m in modules() if m[1].startswith("mdpy.backends")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_backendsImportNoProtocol(path, dotted, tree):
    protocols = tuple("mdpy.%s" % (package,) for package in PROTOCOLS)
    assert [name for name in imported(tree, dotted)
            if name in protocols or name.startswith(tuple(p + "." for p in protocols))] == []


def test_aViolationIsFound():
    """
    The checks see what they look for: an import of a backend module, a
    thread pool, a protocol import from a backend.
    """
    tree = ast.parse("from mdpy.backends.files.maildir import MaildirStore\n"
                     "from twisted.internet import threads\nthreads.deferToThread(f)\n")
    assert [n for n in imported(tree, "mdpy.imap.x") if isBackendModule(n)] == [
        "mdpy.backends.files.maildir", "mdpy.backends.files.maildir.MaildirStore"]
    assert "deferToThread" in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    relative = ast.parse("from ...imap import server\n")
    assert "mdpy.imap.server" in imported(relative, "mdpy.backends.files.x")
