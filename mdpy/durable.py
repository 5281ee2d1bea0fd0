# -*- test-case-name: tests.test_store_maildir,tests.test_tap -*-
"""
Durable file writes: what "on disk" means wherever mdpy acknowledges
something.  A file is complete and fsynced before it gets its final name, and
the directory holding the name is fsynced after.
"""

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


def writeParts(fd, parts, chunkSize=65536):
    """
    Write C{parts} to C{fd}: each part is bytes or a file-like object read
    to its end in chunks.

    @return: the number of octets written.
    """
    size = 0
    for part in parts:
        if isinstance(part, (bytes, bytearray, memoryview)):
            size += writeAll(fd, part)
            continue
        read = part.read
        while True:
            chunk = read(chunkSize)
            if not chunk:
                break
            size += writeAll(fd, chunk)
    return size


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
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        writeAll(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsyncDirectory(os.path.dirname(path))
