# -*- test-case-name: tests.test_store_maildir,tests.test_tap -*-
"""
Durable file writes: what "on disk" means wherever mdpy acknowledges
something.  A file is complete and fsynced before it gets its final name, and
the directory holding the name is fsynced after.
"""

import ctypes
import os


def writeAll(fd, data):
    """
    Write all of C{data} to C{fd}, however many calls it takes.

    @return: the number of octets written.
    """
    total = len(data)
    written = os.write(fd, data)
    if written < total:
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]
    return total


def writeParts(fd, parts, chunkSize=65536, observe=None):
    """
    Write C{parts} to C{fd}: each part is bytes or a file-like object read
    to its end in chunks.

    @param observe: L{None}, or called with each piece before it is written.
    @return: the number of octets written.
    """
    size = 0
    for part in parts:
        if isinstance(part, (bytes, bytearray, memoryview)):
            if observe is not None:
                observe(part)
            size += writeAll(fd, part)
            continue
        read = part.read
        while True:
            chunk = read(chunkSize)
            if not chunk:
                break
            if observe is not None:
                observe(chunk)
            size += writeAll(fd, chunk)
    return size


def _syncFileRange():
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _syncFileRange()
_SYNC_FILE_RANGE_WRITE = 2


def startWriteback(fd):
    """
    Start writing the data of C{fd} to disk, without waiting for it (Linux
    C{sync_file_range(SYNC_FILE_RANGE_WRITE)}; nothing elsewhere).  A hint,
    not a guarantee: nothing is durable before C{fsync}, which still follows
    for every file.  Started for each file of a batch before the first
    C{fsync}, the writes go to the disk together instead of one C{fsync}
    after the other.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def fsyncDirectory(path):
    """
    Make the names in directory C{path} durable.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlinkQuietly(path):
    """
    Remove C{path} if it is there.
    """
    try:
        os.unlink(path)
    except OSError:
        pass


def writeFileAtomically(path, data, mode=0o600):
    """
    Replace C{path} by a file holding C{data}: readers see the old file or the
    whole new one, and the new one is durable when this returns.
    """
    replaceFile(path, data, mode)
    fsyncDirectory(os.path.dirname(path))


def replaceFile(path, data, mode=0o600):
    """
    L{writeFileAtomically} but for the directory's fsync, which the caller
    makes before it tells anyone the new file is there: readers see the old
    file or the whole new one, and whichever of them a crash leaves is
    complete.
    """
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        writeAll(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
