"""Everything that speaks SQL: the pool and embedded server, migrations, the document store and one
repository module per domain. Nothing outside this package opens a database connection."""

from .database import AppRole, Database
from .registry import DatabaseRegistry

__all__ = ["AppRole", "Database", "DatabaseRegistry"]
