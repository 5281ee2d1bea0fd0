"""
The installed package must hold every subpackage: setup.cfg lists them by
hand (the plugin folder twisted/plugins must not become a package).
"""

import configparser
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_everySubpackageIsListed():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    listed = set(config["options"]["packages"].split())
    found = {"twisted.plugins"}
    for directory, subdirectories, files in os.walk(os.path.join(ROOT, "mdpy")):
        if "__init__.py" in files:
            found.add(os.path.relpath(directory, ROOT).replace(os.sep, "."))
    assert listed == found


def test_noInitInThePluginFolder():
    assert not os.path.exists(os.path.join(ROOT, "twisted", "__init__.py"))
    assert not os.path.exists(os.path.join(ROOT, "twisted", "plugins", "__init__.py"))
