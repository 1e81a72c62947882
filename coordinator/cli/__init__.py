"""moorage: the operator CLI over the coordinator's REST API (client.py the HTTP, parser.py the arguments,
commands.py what each command calls and prints, render.py the tables)."""

from coordinator.cli.client import ApiError, Client, Unreachable, error_from_body, render_error, resolve_key
from coordinator.cli.commands import EXIT_API, EXIT_UNREACHABLE, EXIT_USAGE, default_name, main, parser, run
from coordinator.cli.parser import build_parser
from coordinator.cli.render import INSTANCE_HEADERS, format_age, format_table, instance_rows, node_rows

__all__ = [
    "EXIT_API",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "INSTANCE_HEADERS",
    "ApiError",
    "Client",
    "Unreachable",
    "build_parser",
    "default_name",
    "error_from_body",
    "format_age",
    "format_table",
    "instance_rows",
    "main",
    "node_rows",
    "parser",
    "render_error",
    "resolve_key",
    "run",
]
