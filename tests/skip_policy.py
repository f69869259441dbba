"""Under CI=true a skipped test fails: .ci/run installs every toolchain and extra the suite
uses (adb, sshd, the Android tools, the Swift chroot and SwiftLint, the pip extras), so a
skip there means a check silently did not run. Only tests marked `macos_only` (their
outcome depends on running on macOS) may skip.

tests/conftest.py imports these hooks; tests/test_bad_input_numbers.py runs them on a
generated test file.
"""

from __future__ import annotations

import os

import pytest

MARK = "macos_only"


def strict() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail(report, where: str) -> None:
    report.outcome = "failed"
    report.longrepr = (f"{where} skipped under CI=true ({_reason(report)}); .ci/run installs "
                       f"every toolchain the suite uses, so only tests marked {MARK} may "
                       "skip there")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (strict() and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker(MARK) is None):
        _fail(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module-level importorskip (or skip) skips a whole file at collection time."""
    outcome = yield
    report = outcome.get_result()
    if strict() and report.skipped:
        _fail(report, str(collector.nodeid) or "a test module")
