"""
Test collection for mdpy: every test in a C{test_e2e_*} module is marked
C{e2e} (it starts real servers and clients over loopback), so the fast
in-memory run is C{pytest -m "not e2e"}.
"""

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "e2e: end-to-end test with real processes over loopback")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2].startswith("test_e2e_"):
            item.add_marker(pytest.mark.e2e)
