"""PostgreSQL: the engine and migrations, and one store module per concern (all the SQL)."""
