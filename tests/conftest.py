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


# Modules that check the stored hashes' parameters or the cost of a check.
_REAL_HASH_COST = ("test_passwords", "test_checkers")


@pytest.fixture(autouse=True)
def cheapPasswordHashes(request, monkeypatch):
    """
    In-memory tests hash passwords with scrypt N=2**10 instead of 2**14:
    the parameters are stored in each hash, so checking works the same,
    and the suite spends its time on what it tests.  End-to-end tests and
    the tests of the hashes themselves keep the real cost.
    """
    name = request.module.__name__.rpartition(".")[2]
    if name.startswith("test_e2e_") or name in _REAL_HASH_COST:
        return
    from mdpy.auth import passwords

    monkeypatch.setattr(passwords, "SCRYPT_LOG_N", 10)
