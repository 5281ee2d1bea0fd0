# -*- test-case-name: tests.test_imap_search -*-
"""
IMAP SEARCH (RFC 3501 section 6.4.4, search-key grammar in section 9) with
the CONDSTORE C{MODSEQ} key (RFC 7162 section 3.1.5), the WITHIN keys
C{YOUNGER} and C{OLDER} (RFC 5032), the ESEARCH return options MIN, MAX,
ALL and COUNT (RFC 4731) and the CONTEXT=SEARCH return options UPDATE,
CONTEXT and PARTIAL (RFC 5267 section 4, PARTIAL as RFC 9394 section 3.1
has it) and SEARCHRES's SAVE and C{$} (RFC 5182).

This module is past ~800 lines on purpose: it is the whole of SEARCH (the
key grammar, the matching of every key, the responses), which SORT, THREAD
and the CONTEXT=SEARCH updates use as one unit; it does no I/O.

This module does no I/O: L{parseSearchCommand} reads the tokens of a
command into a L{SearchCommand}, the session tests each message of its view
with L{Criteria.match}, and L{formatSearchResponse} writes the untagged
reply.

Invariants: parsing never recurses, so no input raises anything but
L{ParseError} or L{BadCharset}.  Keys are read with an explicit stack;
C{NOT NOT k} is folded to C{k} and nested ANDs and ORs are flattened as
they are built, so long C{NOT} and C{OR} chains and deep parentheses add no
depth; a criteria tree still deeper than L{MAX_DEPTH} after that is a
L{ParseError}.  Matching recurses over that tree, so never deeper than
L{MAX_DEPTH}.
"""

import codecs
import re
import time
from bisect import bisect_right

from mdpy.imap.parser import (
    Atom,
    ParseError,
    SequenceSet,
    astring,
    formatSequence,
    isAtom,
    number,
    number64,
    parseDate,
)
from mdpy.imap.partial import formatPartial, parsePartialRange
from mdpy.imap.structure import quoteString
from mdpy.mail.addresslist import MISSING_DOMAIN, MISSING_MAILBOX, parseAddressList
from mdpy.mail.headers import decodeText, fieldValue, headerEnd, parseDateField, parseFields
from mdpy.mail.mime import UnknownEncoding, decodeTransfer, parseMessage

MAX_DEPTH = 100
SUPPORTED_CHARSETS = ("US-ASCII", "UTF-8")
RETURN_OPTIONS = ("MIN", "MAX", "ALL", "COUNT", "UPDATE", "CONTEXT", "PARTIAL", "SAVE")

# The cost of a key: what a message must be read for to test it.
_CHEAP, _HEADER, _BODY = 0, 1, 2

# What a flag-keyword, an atom, may not hold (RFC 3501 section 9:
# atom-specials, CTLs), nor may it hold 8-bit characters.
_NOT_KEYWORD = re.compile(r'[(){ %*"\\\]\x00-\x1f\x7f]|[^\x00-\x7f]')


class BadCharset(Exception):
    """
    The client named a charset this server does not search in; the server
    answers C{NO [BADCHARSET (US-ASCII UTF-8)]} (RFC 3501 section 6.4.4,
    L{SUPPORTED_CHARSETS}).
    """


class SearchCommand:
    """
    A parsed SEARCH or UID SEARCH command.

    @ivar returnOptions: L{None} without C{RETURN} (a plain C{* SEARCH}
        reply), else the options asked for, upper case (C{[]} for
        C{RETURN ()}, which means ALL; RFC 4731 section 3.1).  C{CONTEXT},
        a hint (RFC 5267 section 4.2), is not kept.
    @ivar charset: C{"US-ASCII"} or C{"UTF-8"}.
    @ivar criteria: a L{Criteria}.
    @ivar partial: the C{(first, last)} positions of C{RETURN (PARTIAL
        first:last)}, C{first} the one nearer the start of the result
        (negative counting from its end), or L{None}.
    """

    def __init__(self, returnOptions, charset, criteria, partial=None):
        self.returnOptions = returnOptions
        self.charset = charset
        self.criteria = criteria
        self.partial = partial

    @property
    def update(self):
        """
        Whether the client asked to be told of changes to the result
        (C{RETURN (UPDATE)}, RFC 5267 section 4.3).
        """
        return bool(self.returnOptions) and "UPDATE" in self.returnOptions

    def __repr__(self):
        return "SearchCommand(%r, %r, %r)" % (self.returnOptions, self.charset, self.criteria)


class Criteria:
    """
    The search keys of a command, ANDed (RFC 3501 section 6.4.4).

    @ivar needsContent: whether L{match} calls C{ctx.content} (header, body,
        text and sent-date keys); keys that need no content are tested first,
        so a message already ruled out by them is not read.
    @ivar usesModSeq: whether a C{MODSEQ} key is present, so a reply with
        matches carries their highest mod-sequence (RFC 7162 section 3.1.6;
        RFC 4731 section 3.2).
    @ivar usesRecent: whether a C{RECENT}, C{NEW} or C{OLD} key is
        present, keys IMAP4rev2 has no more (RFC 9051 appendix E).
    """

    def __init__(self, root, usesModSeq, usesRecent=False):
        _sortByCost(root)
        self._root = root
        self.needsContent = root.cost > _CHEAP
        self.usesModSeq = usesModSeq
        self.usesRecent = usesRecent
        self._known = None

    def rememberContent(self):
        """
        From now on, keep what the keys that look at a message's content
        found in each message matched (by its key; a stored message never
        changes), so that L{match} reads a message once: matching it again
        after its flags changed needs no content.

        @return: whether the outcome for a message may change without the
            message changing: the keys name sequence numbers, C{RECENT},
            C{NEW}, C{OLD}, C{YOUNGER}, C{OLDER} or the saved result C{$}.
        """
        if self._known is None:
            self._known = {}
            self._contentLeaves = []
            self.volatile = False
            stack = [self._root]
            while stack:
                node = stack.pop()
                if isinstance(node, _And):
                    stack.extend(node.children)
                elif isinstance(node, _Not):
                    stack.append(node.child)
                elif isinstance(node, _SetKey):
                    self.volatile = self.volatile or not node.uid
                elif node.name in ("RECENT", "NEW", "OLD", "YOUNGER", "OLDER", "$"):
                    self.volatile = True
                elif node.cost > _CHEAP:
                    self._rememberLeaf(node, len(self._contentLeaves))
                    self._contentLeaves.append(node)
        return self.volatile

    @staticmethod
    def _rememberLeaf(leaf, index):
        test = leaf.test

        def remembered(candidate):
            known = candidate.known
            return test(candidate) if known is None else known[index]

        leaf.test = remembered

    def knows(self, message):
        """
        @return: whether L{match} may test C{message} without reading it.
        """
        return not self.needsContent or (self._known is not None and message.key in self._known)

    def forget(self, keys):
        """
        Drop what L{rememberContent} keeps for messages other than those of
        C{keys} (messages expunged).
        """
        if self._known is not None:
            self._known = {key: self._known[key] for key in keys if key in self._known}

    def match(self, message, ctx):
        """
        @param message: has C{.uid}, C{.flags} (a frozenset of L{str}),
            C{.size}, C{.internalDate} (seconds since the epoch) and
            C{.modSeq}.
        @param ctx: the session's view: C{sequence(message)}, C{count},
            C{largestUid}, C{isRecent(message)}, C{content(message)} (the
            raw message; may raise L{mdpy.errors.NotFound}, which is let
            through) and C{now}.
        @return: whether C{message} matches.
        """
        candidate = _Candidate(message, ctx)
        if self._known is not None and self.needsContent:
            known = self._known.get(message.key)
            if known is None:
                known = tuple(leaf.test(candidate) for leaf in self._contentLeaves)
                self._known[message.key] = known
            candidate.known = known
        return self._root.test(candidate)

    def __repr__(self):
        return "Criteria(%r)" % (self._root,)


# --- commands ----------------------------------------------------------------


def parseSearchCommand(tokens):
    """
    Read the arguments of SEARCH or UID SEARCH:
    C{[RETURN (options)] [CHARSET name] key...} (RFC 3501 section 6.4.4,
    RFC 4466 section 2.6, RFC 4731 section 3.1).

    @param tokens: the tokens after C{SEARCH}.
    @rtype: L{SearchCommand}
    @raise ParseError: not well formed, a return option other than those
        of L{RETURN_OPTIONS}, UPDATE or PARTIAL twice, or PARTIAL with ALL
        (RFC 9394 section 3.1).
    @raise BadCharset: a charset other than US-ASCII and UTF-8.
    """
    pos = 0
    returnOptions = partial = None
    if tokens and isAtom(tokens[0], "RETURN"):
        if len(tokens) < 2 or not isinstance(tokens[1], list):
            raise ParseError("RETURN needs a list of options")
        returnOptions = []
        options = iter(tokens[1])
        for option in options:
            if not isAtom(option, *RETURN_OPTIONS):
                raise ParseError("Unsupported RETURN option")
            name = option.upper()
            if name in ("UPDATE", "PARTIAL") and name in returnOptions:
                raise ParseError("RETURN option %s given twice" % (name,))
            if name == "PARTIAL":
                partial = parsePartialRange(next(options, None))
            if name != "CONTEXT" and name not in returnOptions:
                returnOptions.append(name)
        if partial is not None and "ALL" in returnOptions:
            raise ParseError("PARTIAL conflicts with ALL")
        pos = 2
    charset, explicit = "US-ASCII", False
    if pos < len(tokens) and isAtom(tokens[pos], "CHARSET"):
        if pos + 1 >= len(tokens):
            raise ParseError("CHARSET needs a name")
        charset, explicit = _charset(tokens[pos + 1]), True
        pos += 2
    criteria = parseCriteria(tokens[pos:], charset if explicit else None)
    return SearchCommand(returnOptions, charset, criteria, partial)


def _charset(token):
    name = astring(token).decode("ascii", "replace").upper()
    if name not in SUPPORTED_CHARSETS:
        raise BadCharset(name)
    return name


def parseCriteria(tokens, charset=None):
    """
    Read search keys (RFC 3501 section 9, C{search-key}), ANDed.

    @param tokens: the keys.
    @param charset: C{"US-ASCII"} or C{"UTF-8"} as the client named it, or
        L{None} if it named none: strings are then read as UTF-8 (as
        Dovecot does; US-ASCII is a subset of it).
    @rtype: L{Criteria}
    @raise ParseError: not well formed, empty, or nested deeper than
        L{MAX_DEPTH} once simplified.
    """
    reader = _KeyReader(tokens, "ascii" if charset == "US-ASCII" else "utf-8")
    return reader.read()


_OPEN = object()
_CLOSE = object()
_END = object()


def _events(tokens):
    """
    Walk nested token lists without recursion.

    @return: an iterator of tokens, with L{_OPEN} and L{_CLOSE} around the
        content of each list.
    """
    stack = [iter(tokens)]
    while stack:
        for token in stack[-1]:
            if isinstance(token, list):
                yield _OPEN
                stack.append(iter(token))
                break
            yield token
        else:
            stack.pop()
            if stack:
                yield _CLOSE


class _Pending:
    """
    An operator still waiting for its operands.

    @ivar kind: C{"NOT"} (one operand), C{"OR"} (two), C{"("} (up to the
        closing parenthesis) or C{""} (up to the end).
    """

    __slots__ = ("kind", "operands")

    def __init__(self, kind):
        self.kind = kind
        self.operands = []


class _KeyReader:
    """
    A prefix-notation reader of search keys with an explicit stack of
    pending operators.
    """

    def __init__(self, tokens, encoding):
        self._events = _events(tokens)
        self._encoding = encoding
        self.usesModSeq = False
        self.usesRecent = False

    def read(self):
        stack = [_Pending("")]
        for event in self._events:
            if event is _OPEN:
                stack.append(_Pending("("))
                continue
            if event is _CLOSE:
                pending = stack.pop()
                if pending.kind != "(":
                    raise ParseError("Missing search key")
                if not pending.operands:
                    raise ParseError("Empty search key list")
                node = _And.make(pending.operands)
            elif isAtom(event, "NOT", "OR"):
                stack.append(_Pending(event.upper()))
                continue
            else:
                node = self._key(event)
            while True:
                pending = stack[-1]
                pending.operands.append(node)
                if pending.kind == "NOT":
                    node = _Not.make(node)
                elif pending.kind == "OR" and len(pending.operands) == 2:
                    node = _Or.make(pending.operands)
                else:
                    break
                stack.pop()
        if len(stack) != 1:
            raise ParseError("Missing search key")
        if not stack[0].operands:
            raise ParseError("No search key")
        return Criteria(_And.make(stack[0].operands), self.usesModSeq, self.usesRecent)

    def _argument(self):
        token = next(self._events, _END)
        if token is _END or token is _OPEN or token is _CLOSE:
            raise ParseError("Missing search key argument")
        return token

    def _string(self):
        """
        @return: a string argument as L{str} in the command's charset,
            case folded.
        """
        try:
            return astring(self._argument()).decode(self._encoding).casefold()
        except UnicodeDecodeError:
            raise ParseError("String not in the given charset")

    def _key(self, token):
        if not isinstance(token, Atom):
            raise ParseError("Expected a search key")
        name = token.upper()
        if name in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[name]
            return _Leaf(name, _hasFlag(flag, present))
        if name in _STATE_KEYS:
            self.usesRecent = self.usesRecent or name != "ALL"
            return _Leaf(name, _STATE_KEYS[name])
        if name in _HEADER_KEYS:
            field = _HEADER_KEYS[name]
            if field in _ADDRESS_FIELDS:
                return _addressKey(name, field, self._string())
            return _headerKey(name, field, self._string())
        if name in _DATE_KEYS:
            day = parseDate(self._argument())
            return _dateKey(name, _DATE_KEYS[name], day)
        if name == "HEADER":
            field = astring(self._argument()).decode("latin-1").lower()
            if not field:
                raise ParseError("Empty header field name")
            return _headerKey(name, field, self._string())
        if name == "BODY":
            text = self._string()
            return _Leaf(name, lambda c: text in c.bodyText(), _BODY)
        if name == "TEXT":
            text = self._string()
            return _Leaf(name, lambda c: text in c.headerText() or text in c.bodyText(), _BODY)
        if name in ("KEYWORD", "UNKEYWORD"):
            return _Leaf(name, _hasKeyword(_keyword(self._argument()), name == "KEYWORD"))
        if name in ("LARGER", "SMALLER"):
            size = number(self._argument())
            if name == "LARGER":
                return _Leaf(name, lambda c: c.message.size > size)
            return _Leaf(name, lambda c: c.message.size < size)
        if name in ("YOUNGER", "OLDER"):
            return _intervalKey(name, number(self._argument(), nonZero=True))
        if name == "UID":
            argument = self._argument()
            if isAtom(argument, "$"):
                return _SAVED
            return _SetKey(SequenceSet.parse(argument), uid=True)
        if name == "$":
            return _SAVED
        if name == "MODSEQ":
            return self._modSeq()
        if name[:1].isdigit() or name[:1] == "*":
            return _SetKey(SequenceSet.parse(token), uid=False)
        raise ParseError("Unknown search key")

    def _modSeq(self):
        """
        C{MODSEQ [entry-name entry-type-req] mod-sequence-valzer} (RFC 7162
        section 3.1.5).  This server keeps one mod-sequence per message, so
        the entry is checked and then ignored, as section 3.1.5 requires of
        such servers.
        """
        token = self._argument()
        if isinstance(token, bytes):
            if not token.lower().startswith(b"/flags/") or len(token) == 7:
                raise ParseError("Invalid MODSEQ entry name")
            if not isAtom(self._argument(), "PRIV", "SHARED", "ALL"):
                raise ParseError("Invalid MODSEQ entry type")
            token = self._argument()
        value = number64(token)
        self.usesModSeq = True
        return _Leaf("MODSEQ", lambda c: c.message.modSeq >= value)


def _keyword(token):
    """
    @return: a C{flag-keyword} (RFC 3501 section 9: an atom), case folded.
    @raise ParseError: not an atom, or a system flag (C{\\Seen}): Dovecot
        would skip it as an invalid keyword; this server says BAD.
    """
    keyword = astring(token).decode("utf-8", "replace")
    if not keyword or _NOT_KEYWORD.search(keyword):
        raise ParseError("Invalid keyword")
    return keyword.casefold()


# --- criteria trees ------------------------------------------------------------


class _Leaf:
    """
    One search key.

    @ivar cost: L{_CHEAP}, L{_HEADER} or L{_BODY}.
    """

    __slots__ = ("name", "test", "cost")
    depth = 1

    def __init__(self, name, test, cost=_CHEAP):
        self.name = name
        self.test = test
        self.cost = cost

    def __repr__(self):
        return self.name


# The result a SEARCH with RETURN (SAVE) saved, C{$} (RFC 5182 section 2.1).
_SAVED = _Leaf("$", lambda c: c.ctx.isSaved(c.message))


class _Not:
    __slots__ = ("child", "cost", "depth")

    @classmethod
    def make(cls, child):
        if isinstance(child, _Not):
            return child.child
        self = cls()
        self.child = child
        self.cost = child.cost
        self.depth = _depth(child.depth + 1)
        return self

    def test(self, candidate):
        return not self.child.test(candidate)

    def __repr__(self):
        return "NOT %r" % (self.child,)


class _And:
    """
    All children match; the cheap ones are tried first (see L{_sortByCost}).
    """

    __slots__ = ("children", "cost", "depth")

    @classmethod
    def make(cls, operands):
        """
        @return: a node of this kind over C{operands}, with those of the
            same kind merged into it.  The largest of them is extended in
            place (nodes being built have one owner), so a chain of N costs
            O(N).
        """
        same = [operand for operand in operands if type(operand) is cls]
        if same:
            self = max(same, key=lambda operand: len(operand.children))
        elif len(operands) == 1:
            return operands[0]
        else:
            self = cls()
            self.children, self.cost, self.depth = [], _CHEAP, 1
        for operand in operands:
            if operand is self:
                continue
            if type(operand) is cls:
                self.children.extend(operand.children)
                depth = operand.depth
            else:
                self.children.append(operand)
                depth = operand.depth + 1
            self.cost = max(self.cost, operand.cost)
            self.depth = _depth(max(self.depth, depth))
        return self

    def test(self, candidate):
        for child in self.children:
            if not child.test(candidate):
                return False
        return True

    def __repr__(self):
        return "(%s)" % " ".join(map(repr, self.children))


class _Or(_And):
    """
    Any child matches; the cheap ones are tried first.
    """

    __slots__ = ()

    def test(self, candidate):
        for child in self.children:
            if child.test(candidate):
                return True
        return False

    def __repr__(self):
        return "OR(%s)" % " ".join(map(repr, self.children))


def _sortByCost(root):
    """
    Order the children of every AND and OR cheapest first, so a message is
    read only when the keys that need no content leave it in question.
    """
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, _And):
            node.children.sort(key=lambda child: child.cost)
            stack.extend(node.children)
        elif isinstance(node, _Not):
            stack.append(node.child)


def _depth(depth):
    if depth > MAX_DEPTH:
        raise ParseError("Search keys nested too deeply")
    return depth


class _SetKey:
    """
    A sequence set of message numbers or of UIDs (RFC 3501 section 6.4.4):
    C{*} is the largest in the view.  The ranges are merged once per
    largest value, then looked up by bisection.
    """

    __slots__ = ("sequenceSet", "uid", "_largest", "_lows", "_highs")
    cost = _CHEAP
    depth = 1

    def __init__(self, sequenceSet, uid):
        self.sequenceSet = sequenceSet
        self.uid = uid
        self._largest = None

    def test(self, candidate):
        ctx = candidate.ctx
        if self.uid:
            value, largest = candidate.message.uid, ctx.largestUid
        else:
            value, largest = ctx.sequence(candidate.message), ctx.count
        if largest != self._largest:
            self._merge(largest)
        index = bisect_right(self._lows, value) - 1
        return index >= 0 and value <= self._highs[index]

    def _merge(self, largest):
        lows, highs = [], []
        for low, high in sorted(self.sequenceSet.bounds(largest or 0)):
            if highs and low <= highs[-1] + 1:
                highs[-1] = max(highs[-1], high)
            else:
                lows.append(low)
                highs.append(high)
        self._lows, self._highs, self._largest = lows, highs, largest

    def __repr__(self):
        return "UID %r" % (self.sequenceSet,) if self.uid else repr(self.sequenceSet)


_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}

_STATE_KEYS = {
    "ALL": lambda c: True,
    "RECENT": lambda c: c.ctx.isRecent(c.message),
    # NEW is RECENT UNSEEN, OLD is NOT RECENT (RFC 3501 section 6.4.4).
    "NEW": lambda c: "\\Seen" not in c.message.flags and c.ctx.isRecent(c.message),
    "OLD": lambda c: not c.ctx.isRecent(c.message),
}

_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_ADDRESS_FIELDS = frozenset(["bcc", "cc", "from", "to"])

# Each is (which date, how it compares with the key's day).
_DATE_KEYS = {
    "BEFORE": ("internal", "<"),
    "ON": ("internal", "="),
    "SINCE": ("internal", ">="),
    "SENTBEFORE": ("sent", "<"),
    "SENTON": ("sent", "="),
    "SENTSINCE": ("sent", ">="),
}


def _hasFlag(flag, present):
    return lambda c: (flag in c.message.flags) == present


def _hasKeyword(keyword, present):
    def test(c):
        found = any(flag.casefold() == keyword for flag in c.message.flags if not flag.startswith("\\"))
        return found == present

    return test


def _headerKey(name, field, text):
    """
    A substring of the decoded value of any field called C{field} (RFC 3501
    section 6.4.4: an empty C{text} matches every message having the field).
    """
    return _Leaf(name, lambda c: any(text in value for value in c.headerValues(field)), _HEADER)


def _addressKey(name, field, text):
    """
    A substring of the addresses of any field called C{field} as parsed
    (L{_Candidate.addressValues}); an empty C{text} matches every message
    having the field.
    """
    return _Leaf(name, lambda c: any(text in value for value in c.addressValues(field)), _HEADER)


def _dateKey(name, kind, day):
    """
    Compare a message's calendar date with C{day}, disregarding time and
    time zone (RFC 3501 section 6.4.4): the internal date in the server's
    time zone, or the C{Date:} field's date in its own zone.
    """
    source, comparison = kind
    if source == "internal":
        dayOf, cost = _Candidate.internalDay, _CHEAP
    else:
        dayOf, cost = _Candidate.sentDay, _HEADER
    if comparison == "<":
        return _Leaf(name, lambda c: dayOf(c) < day, cost)
    if comparison == "=":
        return _Leaf(name, lambda c: dayOf(c) == day, cost)
    return _Leaf(name, lambda c: dayOf(c) >= day, cost)


def _intervalKey(name, seconds):
    """
    RFC 5032 section 3: OLDER matches an internal date at least C{seconds}
    before now, YOUNGER one at most C{seconds} before now (both inclusive,
    as in Dovecot).
    """
    if name == "OLDER":
        return _Leaf(name, lambda c: c.message.internalDate <= c.ctx.now - seconds)
    return _Leaf(name, lambda c: c.message.internalDate >= c.ctx.now - seconds)


# --- messages --------------------------------------------------------------------


class _Candidate:
    """
    One message being tested, its content read and decoded only when a key
    asks, and at most once.
    """

    __slots__ = (
        "message", "ctx", "known", "_content", "_fields", "_values", "_addresses", "_headerText", "_bodyText",
    )

    def __init__(self, message, ctx):
        self.message = message
        self.ctx = ctx
        self.known = None
        self._content = None
        self._fields = None
        self._values = {}
        self._addresses = {}
        self._headerText = None
        self._bodyText = None

    def content(self):
        if self._content is None:
            self._content = self.ctx.content(self.message)
        return self._content

    def fields(self):
        if self._fields is None:
            data = self.content()
            self._fields = parseFields(data[: headerEnd(data)])
        return self._fields

    def headerValues(self, name):
        """
        @param name: a field name, lower case.
        @return: the decoded, case folded values of the fields called
            C{name}.
        """
        values = self._values.get(name)
        if values is None:
            values = self._values[name] = [
                decodeText(raw).casefold() for field, raw in self.fields() if field.lower() == name
            ]
        return values

    def addressValues(self, name):
        """
        @param name: an address field name, lower case.
        @return: the values of the fields called C{name}, each its address
            list as parsed and written again (L{_writeAddresses}), decoded
            and case folded.
        """
        values = self._addresses.get(name)
        if values is None:
            values = self._addresses[name] = [
                decodeText(_writeAddresses(raw)).casefold() for field, raw in self.fields() if field.lower() == name
            ]
        return values

    def headerText(self):
        if self._headerText is None:
            self._headerText = _fieldsText(self.fields()).casefold()
        return self._headerText

    def bodyText(self):
        if self._bodyText is None:
            self._bodyText = textOf(self.content()).casefold()
        return self._bodyText

    def internalDay(self):
        return time.localtime(self.message.internalDate)[:3]

    def sentDay(self):
        """
        @return: the date of the C{Date:} field in its own zone, or without
            one that can be read, the internal date's (as Dovecot does).
        """
        parsed = parseDateField(fieldValue(self.fields(), "Date"))
        if parsed is not None:
            return tuple(parsed[:3])
        return self.internalDay()


def _writeAddresses(raw):
    """
    Write an address list as Dovecot matches it in a SEARCH: each address
    as C{name <mailbox@host>} or C{mailbox@host}, a group as C{name: ...;},
    comments and white space inside addresses dropped (a comment stands for
    a missing name, L{parseAddressList}).

    @param raw: a field value.
    @return: the list written, encoded words left as they are.
    @rtype: L{bytes}
    """
    out, separator = [], ""
    for name, _, mailbox, host in parseAddressList(raw):
        if host is None:
            if mailbox is not None:  # a group begins
                out.append(separator + mailbox + ": ")
                separator = ""
            else:
                out.append(";")
                separator = ", "
            continue
        local = "" if mailbox == MISSING_MAILBOX else mailbox
        address = local + "@" + host if host != MISSING_DOMAIN else local
        out.append(separator + ("%s <%s>" % (name, address) if name and address else name or address))
        separator = ", "
    return "".join(out).encode("utf-8", "surrogateescape")


def _fieldsText(fields):
    return "\n".join("%s: %s" % (name, decodeText(raw)) for name, raw in fields)


def textOf(data):
    """
    The searchable text of a message's body (RFC 3501 section 6.4.4, BODY):
    each text part with its content transfer encoding (RFC 2045 section 6)
    and charset decoded, plus the header fields of attached messages
    (C{message/rfc822}, at most L{MAX_DEPTH} of them read apart); other
    parts are left out.

    @param data: the whole message.
    @rtype: L{str}
    """
    texts = []
    reparsed = 0
    stack = [(data, parseMessage(data), False)]
    while stack:
        data, part, withHeader = stack.pop()
        if withHeader:
            texts.append(_fieldsText(parseFields(data[part.start : part.bodyStart])))
        attached = tuple(part.contentType) == ("message", "rfc822")
        if part.children:
            stack.extend((data, child, attached) for child in reversed(part.children))
        elif attached and reparsed < MAX_DEPTH:
            # The attached message is not among the children: read it apart.
            reparsed += 1
            inner = data[part.bodyStart : part.end]
            stack.append((inner, parseMessage(inner), True))
        elif part.contentType[0] == "text":
            encoding = getattr(part, "encoding", None)
            if encoding is None:
                raw = fieldValue(parseFields(data[part.start : part.bodyStart]), "Content-Transfer-Encoding")
                encoding = raw.decode("latin-1") if raw else ""
            charset = next((value for name, value in part.params if name.lower() == "charset"), None)
            texts.append(_decodeBody(data[part.bodyStart : part.end], encoding, charset))
    return "\n".join(texts)


def _decodeBody(body, encoding, charset):
    """
    @return: C{body} decoded from its content transfer encoding and
        C{charset} (UTF-8, or Latin-1 where it is not UTF-8, when the charset
        is missing or unknown).
    """
    try:
        body = decodeTransfer(body, encoding)
    except UnknownEncoding:
        pass
    if charset:
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = None
    if charset:
        return body.decode(charset, "replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("latin-1")


# --- responses ---------------------------------------------------------------------


def esearchHead(tag, uid):
    """
    @return: the start of an C{ESEARCH} response to the command of C{tag}:
        C{* ESEARCH (TAG "a1")}, then C{UID} if it was a UID command (RFC
        4731 section 3.1).
    """
    head = b"* ESEARCH (TAG %s)" % (quoteString(tag),)
    return head + b" UID" if uid else head


def savedResult(command, matches):
    """
    What a SEARCH with C{RETURN (SAVE)} saves as C{$} (RFC 5182 section
    2.1): with MIN and/or MAX but neither ALL nor COUNT, only the messages
    they name; else every match.

    @param matches: as for L{formatSearchResponse}.
    @return: the UIDs saved, a L{frozenset}; L{None} without SAVE.
    """
    options = set(command.returnOptions or ())
    if "SAVE" not in options:
        return None
    uids = [match[1] for match in matches]
    if uids and options & {"MIN", "MAX"} and not options & {"ALL", "COUNT"}:
        return frozenset(uids[:1] * ("MIN" in options) + uids[-1:] * ("MAX" in options))
    return frozenset(uids)


def mentionsSave(tokens):
    """
    @param tokens: the arguments of a SEARCH that could not be run.
    @return: whether they ask for C{RETURN (SAVE)}: the saved result is
        then emptied (RFC 5182 section 2.1).
    """
    return len(tokens) > 1 and isAtom(tokens[0], "RETURN") and isinstance(tokens[1], list) and any(
        isAtom(option, "SAVE") for option in tokens[1]
    )


def formatSearchResponse(tag, uid, command, matches):
    """
    The untagged reply to a search.

    Without C{RETURN}, C{* SEARCH 2 5 7} (RFC 3501 section 7.2.5) followed
    by C{(MODSEQ n)} when the criteria had a MODSEQ key and something
    matched (RFC 7162 section 3.1.6).  With C{RETURN}, C{* ESEARCH (TAG
    "a1") UID MIN 2 MAX 7 COUNT 3 ALL 2,5,7} (RFC 4731 section 3.1: MIN, MAX
    and ALL only when something matched, C{PARTIAL (1:10 2,5,7)} of RFC
    9394 section 3.1) followed by C{MODSEQ n} on the same terms (RFC 4731
    section 3.2).

    @param tag: the command's tag.
    @param uid: whether it was UID SEARCH, so numbers are UIDs.
    @param command: the L{SearchCommand}.
    @param matches: C{(sequenceNumber, uid, modSeq)} of each matching
        message, in mailbox order.
    @return: the reply line(s) with CRLF.
    """
    numbers = [match[1] if uid else match[0] for match in matches]
    withModSeq = command.criteria.usesModSeq and bool(matches)
    if command.returnOptions is None:
        line = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
        if withModSeq:
            line += b" (MODSEQ %d)" % max(match[2] for match in matches)
        return line + b"\r\n"
    if command.returnOptions == ["SAVE"]:
        return b""  # RFC 5182 section 2.1: SAVE alone answers nothing
    options = set(command.returnOptions) - {"SAVE"} or {"ALL"}
    words = [esearchHead(tag, uid)]
    if numbers:
        lowest = min(range(len(numbers)), key=numbers.__getitem__)
        highest = max(range(len(numbers)), key=numbers.__getitem__)
        if "MIN" in options:
            words.append(b"MIN %d" % numbers[lowest])
        if "MAX" in options:
            words.append(b"MAX %d" % numbers[highest])
    if "COUNT" in options:
        words.append(b"COUNT %d" % len(numbers))
    if numbers and "ALL" in options:
        words.append(b"ALL " + formatSequence(sorted(set(numbers))))
    if command.partial is not None:
        words.append(formatPartial(command.partial, numbers))
    if withModSeq:
        # RFC 4731 section 3.2: MIN and/or MAX alone report the
        # mod-sequence of the messages they name, anything else that of all
        # matches.
        if options <= {"MIN", "MAX"}:
            named = {lowest} if options == {"MIN"} else {highest} if options == {"MAX"} else {lowest, highest}
            modSeq = max(matches[index][2] for index in named)
        else:
            modSeq = max(match[2] for match in matches)
        words.append(b"MODSEQ %d" % modSeq)
    return b" ".join(words) + b"\r\n"
