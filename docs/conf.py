"""
Sphinx configuration of the developer's guide.

Build it with C{python -m sphinx -W --keep-going -b html docs docs/_build}
(C{tests/test_docs.py} does, with warnings as errors).  Nothing is fetched
from the network: no intersphinx.

The docstrings of mdpy are epytext, as Twisted's are.  Rather than a second
documentation tool, this file turns them into reStructuredText as autodoc
reads them (L{epytextToRest}), and documents zope interfaces, which autodoc
does not see as classes, with the C{zope-interfaces} directive.
"""

import inspect
import os
import re
import sys

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

project = "mdpy"
author = "the mdpy authors"
copyright = "the mdpy authors"
extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"


# --- epytext to reStructuredText ---------------------------------------------------

_INLINE = {"L": "``%s``", "C": "``%s``", "I": "*%s*", "B": "**%s**", "U": "%s"}
_FIELD = re.compile(r"^(\s*)@(\w+)(?:[ \t]+([^:]*?))?(?::(.*))?$")
_FIELD_NAMES = {"return": "returns", "raise": "raises", "raises": "raises",
                "returns": "returns", "param": "param", "type": "type",
                "rtype": "rtype", "ivar": "ivar", "cvar": "cvar", "var": "var",
                "keyword": "keyword", "see": "see also", "note": "note"}


def _inline(text):
    """
    Turn the inline markup C{X{...}} of epytext into reStructuredText,
    braces nested inside it kept.  reStructuredText wants markup set apart
    from the words around it: an escaped space is put where it touches one.
    """
    out, i = [], 0
    while i < len(text):
        if text[i] in _INLINE and text[i + 1:i + 2] == "{":
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            if depth == 0:
                inner = " ".join(text[i + 2:j - 1].split())
                if inner:
                    markup = _INLINE[text[i]] % inner.replace("``", "` `")
                    if out and (out[-1][-1:].isalnum() or out[-1][-1:] in "``*"):
                        markup = "\\ " + markup
                    if text[j:j + 1].isalnum() or text[j:j + 1] in ("`", "*"):
                        markup += "\\ "
                    out.append(markup)
                i = j
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _joinInline(lines):
    """
    Join the lines an inline markup spans, so that it is turned as a whole.
    """
    joined = []
    for line in lines:
        if joined and _open(joined[-1]):
            joined[-1] += " " + line.strip()
        else:
            joined.append(line)
    return joined


def _open(line):
    depth = 0
    for i, char in enumerate(line):
        if char == "{" and (depth or (i and line[i - 1] in _INLINE)):
            depth += 1
        elif char == "}" and depth:
            depth -= 1
    return depth > 0


def epytextToRest(lines):
    """
    @param lines: the lines of an epytext docstring.
    @return: its lines as reStructuredText: inline markup as literals and
        emphasis, C{@param}-style fields as Sphinx info fields.
    """
    rest, inField = [], False
    for line in _joinInline(lines):
        if line[:1].isspace() and line.strip() and not inField and rest and not rest[-1]:
            # An example set in by indentation, after a paragraph at the
            # margin: a literal block.
            previous = [text for text in rest if text][-1:]
            if previous and not previous[0][:1].isspace() and not previous[0].endswith("::"):
                rest[-1:] = ["::", ""]
        if line.strip() and not line[:1].isspace():
            inField = False
        field = _FIELD.match(line)
        if field and field.group(2) in _FIELD_NAMES:
            indent, name, argument, body = field.groups()
            if argument and body is None and name not in ("raise", "raises"):
                rest.append(line)
                continue
            if rest and rest[-1].strip() and not rest[-1].lstrip().startswith(":"):
                rest.append("")
            inField = True
            label = _FIELD_NAMES[name] + (" " + argument if argument else "")
            line = "%s:%s: %s" % (indent, label, (body or "").strip())
        rest.append(_inline(line).rstrip())
    return rest


def _processDocstring(app, what, name, obj, options, lines):
    lines[:] = epytextToRest(lines)


# --- zope interfaces ---------------------------------------------------------------


class ZopeInterfaces(SphinxDirective):
    """
    C{.. zope-interfaces:: package.module}: every interface the module
    defines, with its attributes and methods, in the order of the source.
    """

    required_arguments = 1

    def run(self):
        from zope.interface.interface import InterfaceClass, Method

        module = __import__(self.arguments[0], fromlist=["*"])
        text = [".. currentmodule:: " + module.__name__, ""]
        for name, value in vars(module).items():
            if not isinstance(value, InterfaceClass) or value.__module__ != module.__name__:
                continue
            bases = [base.__name__ for base in value.__bases__ if base.__name__ != "Interface"]
            text += [".. py:class:: %s%s" % (name, "(%s)" % ", ".join(bases) if bases else ""), ""]
            text += self._body(value.__doc__)
            for member in value.names():
                description = value[member]
                if isinstance(description, Method):
                    text += ["   .. py:method:: %s%s" % (member, description.getSignatureString()), ""]
                else:
                    text += ["   .. py:attribute:: %s" % (member,), ""]
                text += ["   " + line for line in self._body(description.getDoc())]
        content = StringList(text, source=module.__file__)
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, content, container)
        return container.children

    def _body(self, doc):
        lines = epytextToRest(inspect.cleandoc(doc or "").splitlines())
        return ["   " + line if line else "" for line in lines] + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _processDocstring)
    app.add_directive("zope-interfaces", ZopeInterfaces)
