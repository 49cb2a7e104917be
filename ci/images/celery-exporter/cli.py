"""The upstream image's entry point: the exporter's click command, CE_* variables."""

from src.cli import cli

if __name__ == "__main__":
    cli(auto_envvar_prefix="CE")
