"""Everything that speaks SQL: the pool and embedded server, migrations, the document store and one
repository module per domain. Nothing outside this package opens a database connection."""
from .database import Database, app_connection_settings
from .registry import DatabaseRegistry

__all__ = ["Database", "DatabaseRegistry", "app_connection_settings"]
