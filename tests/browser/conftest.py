"""Prints what the browser tests measured (``element.MEASURED``) at the end of the run."""

from __future__ import annotations

import pytest

from tests.browser.element import MEASURED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for title, timings, directory in MEASURED:
        if not timings.figures:
            continue
        terminalreporter.section(f"{title} (measured, not asserted)")
        for line in timings.lines():
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"screenshots, timings.json and notes.txt: {directory}")


#: the outcome of a test's call phase, for the screenshot taken when it failed
CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report
