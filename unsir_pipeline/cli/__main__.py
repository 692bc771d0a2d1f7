"""``python -m unsir_pipeline.cli``: what DVC's stage commands (run-stage.sh) and the tests run."""

import sys

from unsir_pipeline.cli.entry_point import main

sys.exit(main())
