"""
The contract suites of L{mdpy.testing.contracts}, run against every
backend mdpy ships (and a failing one, L{tests.contract.flaky}).
"""
