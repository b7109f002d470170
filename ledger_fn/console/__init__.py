"""The ops console: accounts, tiers, events and the price book in a browser, served by
ledger-admin at /console (views.py), behind the admin token (sessions.py)."""

from ledger_fn.console.views import ConsoleConfig, console_blueprint

__all__ = ["ConsoleConfig", "console_blueprint"]
