"""PostgreSQL: where the server lives, its migrations, its connection pool."""
