"""The kit's tables, printed after the run: one per backend and model checked."""

from __future__ import annotations

import pytest

from models.conformance import test_conformance


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for text in test_conformance.TABLES.values():
        terminalreporter.write_sep("-", "conformance kit")
        terminalreporter.write_line(text)
