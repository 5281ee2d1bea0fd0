# -*- test-case-name: tests.test_plugins -*-
"""
Code a configuration names: C{[smtp] factory = package.module:Class},
C{[smtp] checks = package.module:Class} (as Mailman's C{class:} keys and
maddy's module names do).

The one way such a name is read is L{loadObject}; the caller (L{mdpy.tap})
says what kind of object the key wants and names the key in its error.
"""

import importlib


def loadObject(spec):
    """
    Import the object C{spec} names.

    @param spec: C{package.module:Name}; C{Name} may be dotted
        (C{package.module:Class.attribute}).
    @return: the object.
    @raise ValueError: C{spec} is not of that form, its module cannot be
        imported, or has no such name; the message says which, in one line.
    """
    moduleName, colon, name = spec.strip().partition(":")
    parts = moduleName.split(".") + name.split(".")
    if not colon or not all(part.isidentifier() for part in parts):
        raise ValueError("expected package.module:Name")
    try:
        found = importlib.import_module(moduleName)
    except ImportError as e:
        raise ValueError("cannot import %s: %s" % (moduleName, e)) from None
    except Exception as e:
        raise ValueError("importing %s failed: %s: %s" % (moduleName, type(e).__name__, e)) from None
    for attribute in name.split("."):
        try:
            found = getattr(found, attribute)
        except AttributeError:
            raise ValueError("%s has no %s" % (moduleName, name)) from None
    return found
