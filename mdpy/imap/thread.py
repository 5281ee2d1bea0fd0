# -*- test-case-name: tests.test_imap_sort -*-
"""
THREAD (RFC 5256 sections 4 and 5): the ORDEREDSUBJECT and REFERENCES
algorithms over the messages a search matched, and the C{* THREAD} reply.

This module does no I/O; messages come as L{mdpy.imap.sort.Sortable}s.

Invariants: nothing here recurses, so a chain of replies as long as the
mailbox costs no stack: trees are walked with explicit stacks, and a link
that would make a loop (RFC 5256 section 4, step 1) is never made.
"""

from mdpy.imap.parser import Atom, ParseError, isAtom
from mdpy.imap.search import parseSearchCommand

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


class ThreadCommand:
    """
    A parsed THREAD or UID THREAD command.

    @ivar algorithm: C{"ORDEREDSUBJECT"} or C{"REFERENCES"}.
    @ivar search: the L{mdpy.imap.search.SearchCommand} of its charset and
        criteria.
    """

    def __init__(self, algorithm, search):
        self.algorithm = algorithm
        self.search = search


def parseThreadCommand(tokens):
    """
    Read the arguments of THREAD or UID THREAD: C{algorithm charset
    key...} (RFC 5256 section 3).

    @raise ParseError: not well formed, or an unknown algorithm.
    @raise mdpy.imap.search.BadCharset: a charset other than US-ASCII and
        UTF-8.
    """
    if not tokens or not isAtom(tokens[0], *ALGORITHMS):
        raise ParseError("Unknown thread algorithm")
    if len(tokens) < 2:
        raise ParseError("Expected a charset")
    return ThreadCommand(tokens[0].upper(), parseSearchCommand([Atom("CHARSET")] + tokens[1:]))


class Container:
    """
    A node of a thread: a message, or a dummy standing for a message that
    others refer to but that is not in the set (RFC 5256 section 4).

    @ivar item: the L{mdpy.imap.sort.Sortable}, or L{None} for a dummy.
    @ivar parent: the parent L{Container}, or L{None}.
    @ivar children: the child L{Container}s.
    """

    __slots__ = ("item", "parent", "children", "sortKey")

    def __init__(self, item=None):
        self.item = item
        self.parent = None
        self.children = []
        self.sortKey = None

    def isAncestorOf(self, other):
        """
        @return: whether C{other} is this container or below it (walking up
            from C{other}; a container without children answers at once).
        """
        if not self.children:
            return other is self
        node = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False

    def adopt(self, child):
        """
        Make C{child} a child of this container, taken from its parent.
        """
        child.orphan()
        child.parent = self
        self.children.append(child)

    def orphan(self):
        if self.parent is not None:
            self.parent.children.remove(self)
            self.parent = None


def _dateKey(item):
    return (item.sentDate, item.sequence)


def orderedSubject(items):
    """
    THREAD=ORDEREDSUBJECT (RFC 5256 section 5, "ORDEREDSUBJECT"): messages
    sorted by base subject then sent date; each run of one subject is a
    thread, its first message the parent of the others; threads in the
    order of the sent dates of their first messages.

    @param items: the L{mdpy.imap.sort.Sortable}s.
    @return: the root L{Container}s, in order.
    """
    ordered = sorted(items, key=lambda item: (item.fields.subject, item.sentDate, item.sequence))
    roots = []
    for item in ordered:
        node = Container(item)
        if roots and roots[-1].item.fields.subject == item.fields.subject:
            roots[-1].adopt(node)
        else:
            roots.append(node)
    roots.sort(key=lambda root: _dateKey(root.item))
    return roots


def references(items):
    """
    THREAD=REFERENCES (RFC 5256 section 5, "REFERENCES", steps 1 to 6).

    @param items: the L{mdpy.imap.sort.Sortable}s, in mailbox order.
    @return: the root L{Container}s, in order.
    """
    # Step 1: a container per message identifier, linked as References
    # say.
    byId = {}
    everything = []
    for item in sorted(items, key=lambda item: item.sequence):
        messageId = item.fields.messageId
        node = byId.get(messageId) if messageId is not None else None
        if node is not None and node.item is None:
            node.item = item
        else:
            # No identifier, or a duplicate: the message gets a container
            # of its own that nothing can refer to.
            node = Container(item)
            everything.append(node)
            if messageId is not None:
                byId.setdefault(messageId, node)
        previous = None
        for reference in item.fields.references:
            current = byId.get(reference)
            if current is None:
                current = byId[reference] = Container()
                everything.append(current)
            if previous is not None and current.parent is None and not current.isAncestorOf(previous):
                previous.adopt(current)
            previous = current
        # Step 1C: the last reference is the parent, replacing any a
        # truncated References of another message made.
        node.orphan()
        if previous is not None and previous is not node and not node.isAncestorOf(previous):
            previous.adopt(node)
    # Step 2 and 3: the roots; the identifiers are no longer needed.
    roots = [node for node in everything if node.parent is None]
    # Step 4: prune dummies.
    roots = _prune(roots)
    # Step 5: group the roots by base subject.
    roots = _groupBySubject(roots)
    # Step 6: sort by sent date.
    _sortTree(roots)
    return roots


def _prune(roots):
    """
    RFC 5256 section 4, step 4: a dummy without children goes; a dummy
    with children is replaced by them, except at the root with more than
    one child.

    @return: the new roots.
    """
    top = Container()
    top.children = roots
    stack = [top]
    while stack:
        node = stack.pop()
        kept = []
        pending = list(reversed(node.children))
        while pending:
            child = pending.pop()
            if child.item is None and not (node is top and len(child.children) > 1):
                # Replaced by its children (none: it just goes).
                pending.extend(reversed(child.children))
                continue
            child.parent = None if node is top else node
            kept.append(child)
        node.children = kept
        stack.extend(kept)
    return top.children


def _subjectOf(root):
    item = root.item if root.item is not None else root.children[0].item
    return item.fields.subject, item.fields.replied


def _groupBySubject(roots):
    """
    RFC 5256 section 4, step 5: roots whose threads have the same base
    subject are merged.

    @return: the new roots.
    """
    # A dummy root's subject is that of its first child: the earliest.
    for root in roots:
        if root.item is None:
            root.children.sort(key=_nodeDate)
    table = {}
    for root in roots:
        subject, replied = _subjectOf(root)
        if not subject:
            continue
        held = table.get(subject)
        if held is None:
            table[subject] = root
        elif held.item is not None and (
            root.item is None or (_subjectOf(held)[1] and not replied)
        ):
            table[subject] = root
    merged = []
    for root in roots:
        if root.parent is not None:  # merged into a thread already
            continue
        subject, replied = _subjectOf(root)
        held = table.get(subject) if subject else None
        if held is None or held is root:
            merged.append(root)
            continue
        if held.item is None and root.item is None:
            for child in root.children:
                child.parent = held
            held.children.extend(root.children)
            root.children = []
        elif held.item is None:
            held.adopt(root)
        elif replied and not _subjectOf(held)[1]:
            held.adopt(root)
        else:
            # The held thread is left out of the roots when its turn comes
            # (or below): it has a parent now.
            dummy = Container()
            dummy.adopt(held)
            dummy.adopt(root)
            table[subject] = dummy
            merged.append(dummy)
    return [root for root in merged if root.parent is None]


def _nodeDate(node):
    """
    @return: what siblings are sorted by: the sent date and sequence
        number of the message, or for a dummy those of its first child.
    """
    while node.item is None and node.children:
        node = node.children[0]
    if node.item is None:
        return (0, 0)
    return _dateKey(node.item)


def _sortTree(roots):
    """
    RFC 5256 section 4, step 6: siblings by sent date, a dummy by its first
    child's (children sorted first, bottom up).
    """
    order = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        node.children.sort(key=_nodeDate)
    roots.sort(key=_nodeDate)


def formatThreadResponse(roots):
    """
    The untagged reply (RFC 5256 section 4): C{* THREAD (2)(3 6 (4 23)(44
    7 96))}; a message with one child is followed by it in the same list,
    one with more by a list for each.

    @param roots: the root L{Container}s, in order.
    @return: the reply line with CRLF.
    """
    out = [b"* THREAD "]
    # Each entry: a container to write, or the bytes to write.
    if not roots:
        return b"* THREAD\r\n"
    stack = []
    for root in reversed(roots):
        stack.append(b")")
        stack.append(root)
        stack.append(b"(")
    while stack:
        entry = stack.pop()
        if isinstance(entry, bytes):
            out.append(entry)
            continue
        node = entry
        # A run of single children is written in one list.
        while True:
            if node.item is not None:
                if out[-1] not in (b"(", b"* THREAD "):
                    out.append(b" ")
                out.append(b"%d" % (node.item.number,))
            if len(node.children) != 1:
                break
            node = node.children[0]
        if len(node.children) > 1:
            if node.item is not None:
                out.append(b" ")
            for child in reversed(node.children):
                stack.append(b")")
                stack.append(child)
                stack.append(b"(")
    return b"".join(out) + b"\r\n"
