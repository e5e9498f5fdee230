"""Test-session set-up shared by every tier.

NB: looptime's pytest plugin asks the event-loop policy for the current loop before each test
(``policy.get_event_loop()`` in its ``pytest_pyfunc_call``). Before Python 3.14 that call
*creates* and installs a loop when nothing has set one yet on the main thread, which is the case
when the session's first test is synchronous. Nothing ever closes that loop, so it is reported
later as "unclosed event loop", a ResourceWarning that ``filterwarnings = error`` pins on
whichever test is running when it is collected. Setting "no current loop" once, before any
test, makes that call raise instead (looptime treats it as "no loop, not my business"), which
is what Python 3.14 does anyway. pytest-asyncio installs and clears its own loops per scope.
"""

from __future__ import annotations

import asyncio

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    asyncio.set_event_loop(None)
