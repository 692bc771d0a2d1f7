"""``python -m unsir_pipeline.cli``: what DVC's stage commands (run-stage.sh) and the tests run."""

import sys

from unsir_pipeline.cli.commands import main

sys.exit(main())
