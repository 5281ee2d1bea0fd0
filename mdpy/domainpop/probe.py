# -*- test-case-name: tests.test_domainpop_probe -*-
"""
C{mdpy domainpop probe}: find which field of the ISP's copies names the
envelope recipient, from an archive of collected mail.

The test (as MDaemon's support suggests for DomainPOP duplicates): from an
outside mailbox, send a message to that mailbox and Bcc one local address,
let DomainPOP collect it with C{archive_dir} set, then probe the archive for
the local address.  A Bcc recipient is in no C{To}/C{Cc} field, so a field
that still names it was added on the way: by the ISP, if the same field is
in the ISP's copies of other mail, holding one address each time.

Which messages test a field: those where the probe address appears in some
field other than the address fields written by the sender
(L{VISIBLE_HEADERS}: C{To}, C{Cc}, C{Bcc}, C{Resent-*}, C{From}...).  Such a
message is a copy for the probe address, so a field giving the envelope
recipient must name it there; a copy for someone else that merely lists the
probe address in C{To} or C{From} tests nothing.

A field is reliable when it names the probe address in each of those
messages and, over the whole archive, holds exactly one address in at least
L{RELIABLE_SHARE} of the messages.  The first reliable one of
L{mdpy.domainpop.recipients.ENVELOPE_HEADERS}, then C{Received}, is
recommended.  For C{Received}, unless the rules already name trusted
hosts, the C{by} hosts of the lines from the top down to the one naming the
probe address are taken as the ISP's (see
L{mdpy.domainpop.recipients.receivedAddresses}) and recommended as
C{trusted_received_hosts}.

The probe cannot tell a field the ISP adds from one a sender forged: the
report says to repeat the test from several outside providers.
"""

import os
import re

from mdpy.address import normalise
from mdpy.domainpop.recipients import (
    ENVELOPE_HEADERS,
    MAX_HEAD,
    Head,
    RoutingRules,
    parseHead,
    receivedAddresses,
    receivedFor,
)
from mdpy.errors import InvalidInput
from mdpy.mail.addresslist import checkAddress, mailboxesIn

CANDIDATES = ENVELOPE_HEADERS + ("received",)

# Address fields a sender writes: where a Bcc recipient is not, and where an
# address says nothing of whom a copy was for.
VISIBLE_HEADERS = (
    "to",
    "cc",
    "bcc",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "resent-from",
    "resent-sender",
    "resent-reply-to",
    "from",
    "sender",
    "reply-to",
    "return-path",
    "mail-followup-to",
    "mail-reply-to",
    "errors-to",
    "disposition-notification-to",
)

RELIABLE_SHARE = 0.9

# Messages listed by ProbeReport.lines.
MAX_LISTED = 30

_DISPLAY = {
    "x-rcpt-to": "X-Rcpt-To",
    "x-mdrcpt-to": "X-MDRcpt-To",
    "x-delivered-to": "X-Delivered-To",
    "delivered-to": "Delivered-To",
    "x-original-to": "X-Original-To",
    "envelope-to": "Envelope-To",
    "x-envelope-to": "X-Envelope-To",
    "received": "Received",
}


def displayName(name):
    """
    @return: the usual spelling of the lowercased field name C{name}.
    """
    return _DISPLAY.get(name) or "-".join(part.capitalize() for part in name.split("-"))


def _ordinal(n):
    if 10 <= n % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return "%d%s" % (n, suffix)


class ProbeReport:
    """
    What L{probe} found.

    @ivar address: the probe address, normalised.
    @ivar messages: how many messages were read.
    @ivar tests: how many of them are copies for the probe address (it
        appears outside L{VISIBLE_HEADERS}).
    @ivar matches: C{[(messageName, [(headerName, occurrence)])]} for the
        messages holding the probe address anywhere in their header
        section: the lowercased field names, with which field of that name
        it is, counted from the top from 1.
    @ivar candidates: C{[(headerName, present, singleAddress, holdsProbe)]}
        for each of L{CANDIDATES}: in how many messages the field is (for
        C{received}: gives an address under the rules), of those in how many
        it holds exactly one address, and in how many it holds the probe
        address.
    @ivar recommendation: the configuration line to use, e.g.
        C{"parse_headers = X-Rcpt-To"}, or L{None} when no field is
        reliable.
    @ivar receivedHosts: the C{by} hosts whose C{Received} fields were read
        for the C{received} candidate: the rules' trusted hosts, or those
        found above the lines naming the probe address; empty for all.
    @ivar trustedHosts: with C{parse_headers = Received} recommended, the
        C{by} hosts to trust (L{receivedHosts}); otherwise empty.
    """

    def __init__(self, address):
        self.address = address
        self.messages = 0
        self.tests = 0
        self.matches = []
        self.candidates = []
        self.recommendation = None
        self.receivedHosts = []
        self.trustedHosts = []

    def __repr__(self):
        return "<ProbeReport %s: %r>" % (self.address, self.recommendation)

    def lines(self):
        """
        @return: the report C{mdpy domainpop probe} prints, as lines without
            line ends, the last one the recommendation (or that there is
            none and the default fields stay).
        """
        out = ["Probe for %s in %d message(s): %d name it outside To/Cc/From (copies for it)."
               % (self.address, self.messages, self.tests)]
        if self.matches:
            out.append("Where %s appears (copies for it first):" % (self.address,))
            tests = [m for m in self.matches if _isTest(m[1])]
            others = [m for m in self.matches if not _isTest(m[1])]
            for name, found in (tests + others)[:MAX_LISTED]:
                where = ", ".join("%s (%s)" % (displayName(h), _ordinal(n)) for h, n in found)
                out.append("  %s: %s" % (name, where))
            if len(self.matches) > MAX_LISTED:
                out.append("  ... and %d more" % (len(self.matches) - MAX_LISTED,))
        else:
            out.append("%s appears in no message." % (self.address,))
        if not self.tests:
            out.append("Send the test first: from an outside mailbox, mail that mailbox and Bcc %s;"
                       " collect it with archive_dir set." % (self.address,))
        out.append("Candidate fields (messages having it / with one address / naming %s):" % (self.address,))
        for name, present, single, holds in self.candidates:
            label = displayName(name)
            if name == "received" and self.receivedHosts:
                label += " by " + ", ".join(self.receivedHosts)
            out.append("  %-40s %6d %6d %6d" % (label, present, single, holds))
        if self.recommendation is None:
            out.append("No field reliably names the envelope recipient: the default fields"
                       " (To, Cc, ...) stay, with dedupe_header to drop the duplicates.")
            return out
        out.append("Make sure the ISP adds the field and not the sender: repeat the test"
                   " from several outside providers.")
        line = "Recommendation: " + self.recommendation
        if self.trustedHosts:
            line += ", trusted_received_hosts = " + " ".join(self.trustedHosts)
        out.append(line)
        return out


def _isTest(found):
    """
    @param found: C{[(headerName, occurrence)]} where the probe address is.
    @return: whether that makes the message a copy for it.
    """
    return any(name not in VISIBLE_HEADERS for name, occurrence in found)


def _pattern(address):
    """
    @return: a regular expression finding C{address} in a field's text, not
        as part of a longer address.
    """
    return re.compile(r"(?<![\w.!#$%&'*+/=?^`{|}~-])" + re.escape(address) + r"(?![\w-]|\.\w)", re.I)


class _Message:
    """
    What one message says about the candidate fields.

    @ivar found: C{{headerName: set of addresses}}, for the candidate
        fields present.
    @ivar test: it is a copy for the probe address.
    @ivar received: a L{Head} of the message's C{Received} fields only.
    """

    def __init__(self, head, test):
        self.test = test
        self.received = Head([("received", raw) for raw in head.raw("received")], head.truncated, 0)
        self.found = {}
        for name in ENVELOPE_HEADERS:
            raws = head.raw(name)
            if raws:
                addresses = set()
                for raw in raws:
                    addresses.update(mailboxesIn(raw.decode("utf-8", "replace"))[0])
                self.found[name] = addresses

    def receivedFound(self, rules):
        """
        @return: the set of addresses the C{for} clauses give under
            C{rules}, or L{None} when they give none.
        """
        addresses = set()
        for byHost, candidate in receivedAddresses(self.received, rules):
            try:
                addresses.add(checkAddress(candidate))
            except InvalidInput:
                pass
        return addresses or None


def _chainHosts(head, rules, address):
    """
    @return: the C{by} hosts of the C{Received} fields from the top (after
        the skipped ones) down to the first naming C{address} in its C{for}
        clause, top first; empty when none names it.
    """
    hosts = []
    for raw in head.raw("received")[rules.receivedSkip :]:
        byHost, candidate = receivedFor(raw.decode("utf-8", "replace"))
        if byHost is not None and byHost not in hosts:
            hosts.append(byHost)
        if candidate is not None:
            try:
                if checkAddress(candidate) == address:
                    return hosts
            except InvalidInput:
                pass
    return []


def _tally(name, found, address, tests):
    """
    @param found: one C{set} of addresses or L{None} per message.
    @param tests: whether each message is a copy for C{address}.
    @return: C{((name, present, single, holds), reliableForTests)}.
    """
    present = single = holds = testsHeld = 0
    for addresses, test in zip(found, tests):
        if addresses is None:
            continue
        present += 1
        single += len(addresses) == 1
        if address in addresses:
            holds += 1
            testsHeld += test
    return (name, present, single, holds), testsHeld


def probe(messages, address, rules=None):
    """
    Look for the field that names the envelope recipient.

    @param messages: an iterable of C{(name, data)}: the start of each
        message (its header section at least), e.g. from L{readArchive}.
    @param address: a local address that was only Bcc'd in the test.
    @param rules: the source's L{RoutingRules}, for its C{Received} skip and
        trusted hosts.
    @rtype: L{ProbeReport}
    @raise mdpy.errors.InvalidInput: C{address} is not an address.
    """
    address = normalise(address)
    rules = rules or RoutingRules()
    report = ProbeReport(address)
    pattern = _pattern(address)
    parsed = []
    for name, data in messages:
        head = parseHead(data)
        occurrences = {}
        found = []
        for fieldName, raw in head.fields:
            occurrences[fieldName] = occurrences.get(fieldName, 0) + 1
            if pattern.search(raw.decode("utf-8", "replace")):
                found.append((fieldName, occurrences[fieldName]))
        if found:
            report.matches.append((name, found))
        parsed.append(_Message(head, _isTest(found)))
    report.messages = len(parsed)
    tests = [m.test for m in parsed]
    report.tests = sum(tests)

    receivedRules = rules
    if not rules.trustedReceivedHosts:
        hosts = []
        for m in parsed:
            if m.test:
                for host in _chainHosts(m.received, rules, address):
                    if host not in hosts:
                        hosts.append(host)
        if hosts:
            receivedRules = RoutingRules(("received",), rules.receivedSkip, hosts, rules.maxHops)
    report.receivedHosts = list(receivedRules.trustedReceivedHosts)

    reliable = []
    for name in CANDIDATES:
        if name == "received":
            found = [m.receivedFound(receivedRules) for m in parsed]
        else:
            found = [m.found.get(name) for m in parsed]
        row, testsHeld = _tally(name, found, address, tests)
        report.candidates.append(row)
        single = row[2]
        if report.tests and testsHeld == report.tests and single >= RELIABLE_SHARE * report.messages:
            reliable.append(name)
    if reliable:
        report.recommendation = "parse_headers = " + displayName(reliable[0])
        if reliable[0] == "received":
            report.trustedHosts = report.receivedHosts
    return report


def readArchive(directory):
    """
    Read the messages of an archive directory (C{archive_dir}).

    @return: an iterator of C{(fileName, data)} over the regular files in
        C{directory} (not its subdirectories, not names starting with C{.}
        or ending in C{.tmp}), sorted by name, C{data} being the first
        L{MAX_HEAD} octets: enough for the header section.
    """
    names = sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_file() and not entry.name.startswith(".") and not entry.name.endswith(".tmp")
    )
    for name in names:
        try:
            with open(os.path.join(directory, name), "rb") as f:
                data = f.read(MAX_HEAD)
        except OSError:
            continue
        yield name, data
