"""Browser-test fixtures (see tests/e2e/kit.py): one demo server per module, Chromium, console."""

from tests.e2e.kit import browser, console, demo

__all__ = ["browser", "console", "demo"]
