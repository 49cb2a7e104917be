"""Logs{% if cookiecutter.use_sentry == "yes" %}, error reporting{% endif %}, task lifecycle logs and the consumer watchdog."""
