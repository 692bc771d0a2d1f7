"""The command line (``unsir``). It sits above the flows and is imported by nothing in the pipeline.

``entry_point.main`` parses the arguments (``parser``) and runs the command's ``cmd_*`` function,
one module per group of commands: ``forget``; ``models`` (models, promote, reject);
``requests_and_batches`` (request, batch, review); ``audit`` (audit, state); ``project`` (init,
bootstrap, stage); ``serve``. ``errors`` holds the exit codes and the one ``error:`` line, ``common``
what the commands share. The work behind them: ``bootstrap`` (the first run), ``project_templates``
(``unsir init``) and ``progress`` (progress lines)."""

from unsir_pipeline.cli.entry_point import main
from unsir_pipeline.cli.parser import build_parser

__all__ = ["build_parser", "main"]
