"""
The installed package must hold every subpackage: setup.cfg lists them by
hand (the plugin folder twisted/plugins must not become a package).  CI runs
the README's test command, and the README stands on its own.
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


def readText(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def test_ciRunsTheReadmeTestCommand():
    """
    C{.ci/run} runs exactly the test command README.rst gives: the one
    indented line that runs pytest after installing the packages.
    """
    [readme] = [
        line.strip() for line in readText("README.rst").splitlines()
        if line.startswith("    apt-get update") and "pytest" in line
    ]
    [ci] = [line for line in readText(".ci", "run").splitlines() if line.startswith("apt-get update")]
    assert ci == readme


def test_readmeStandsAlone():
    """
    README.rst names no file outside the repository.
    """
    assert "../" not in readText("README.rst")
