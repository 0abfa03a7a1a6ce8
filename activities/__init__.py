"""Activities: the only code that touches the outside world (SMTP, the records database)."""
