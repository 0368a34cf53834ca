"""WebHost Sync: the running server (composition root in app.py, CLI in cli.py)."""

__version__ = "0.1.0"
