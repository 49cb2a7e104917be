"""The HTTP producer: submit, inspect and cancel tasks; health and metrics."""
