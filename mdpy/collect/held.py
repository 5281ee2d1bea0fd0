# -*- test-case-name: tests.test_domainpop_service -*-
"""
The held folder of a collected source: what no recipient could take, a
loop, or what failed permanently, kept for the administrator
(C{mdpy domainpop held NAME}) with when and why it was held in the source's
state (L{mdpy.interfaces.ICollectorStates.stateOf}: C{recordHeld}).
"""

import os

from mdpy import errors
from mdpy.address import normalise
from mdpy.domainpop.recipients import MAX_HEAD, parseHead
from mdpy.mail.addresslist import mailboxesIn, printable

HELD_FOLDER = "held"


def returnPath(head):
    """
    @return: the first Return-Path of C{head}, normalised, or C{""} when
        there is none or it is not a valid address.
    """
    for value in head.values("return-path")[:1]:
        value = value.strip().strip("<>").strip()
        try:
            return normalise(value) if value else ""
        except errors.InvalidInput:
            return ""
    return ""


def _author(head):
    """
    @return: the first address of the first From field of C{head}, or
        C{""}.
    """
    for raw in head.raw("from")[:1]:
        addresses, rejected = mailboxesIn(raw.decode("utf-8", "replace"))
        return addresses[0] if addresses else ""
    return ""


class HeldMessage:
    """
    A message a source keeps in its held folder (L{Collector._hold}).

    @ivar path: its file.
    @ivar heldAt: when it was held, in seconds since the epoch.
    @ivar reason: why.
    @ivar sender: its Return-Path, else its From, or C{""}.
    @ivar subject: its Subject, or C{""}.
    @ivar size: its size in octets.
    """

    def __init__(self, path, heldAt, reason, sender, subject, size):
        self.path = path
        self.heldAt = heldAt
        self.reason = reason
        self.sender = sender
        self.subject = subject
        self.size = size


def heldMessages(stateDir, state):
    """
    Read the held folder of the source whose lock and spool are in
    C{stateDir}, with the reasons its C{state} recorded
    (L{mdpy.interfaces.ICollectorStates.stateOf}; its C{heldReasons} is
    read only when something is held).  A file the state does not explain
    (held by an older mdpy) counts as held when it was written, for a
    reason not recorded; a file the administrator removed is no longer
    listed.

    @param state: a callable returning the source's state.
    @return: a L{list} of L{HeldMessage}, oldest first; sender, subject
        and reason made printable.
    """
    folder = os.path.join(stateDir, HELD_FOLDER)
    try:
        names = sorted(name for name in os.listdir(folder) if name.endswith(".eml"))
    except FileNotFoundError:
        return []
    reasons = state().heldReasons() if names else {}
    held = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                head = parseHead(f.read(MAX_HEAD))
                status = os.fstat(f.fileno())
        except FileNotFoundError:
            continue
        heldAt, reason = reasons.get(name, (status.st_mtime, "no reason recorded"))
        sender = returnPath(head) or _author(head)
        subject = " ".join(head.values("subject")[:1]).strip()
        held.append(HeldMessage(path, heldAt, printable(reason), printable(sender), printable(subject),
                                status.st_size))
    held.sort(key=lambda message: message.heldAt)
    return held
