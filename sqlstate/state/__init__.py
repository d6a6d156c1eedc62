"""The SQLite file: opening it, its schema and migrations, and every transaction sqlstate runs."""
