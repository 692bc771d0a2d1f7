"""The command line (``unsir``): the commands, the first run (bootstrap), ``unsir init`` and
progress lines. It sits above the flows and is imported by nothing in the pipeline."""

from unsir_pipeline.cli.commands import main
from unsir_pipeline.cli.parser import build_parser

__all__ = ["build_parser", "main"]
