"""The MLOps pipeline around the ``unsir`` library, grouped by role (lower layers never import
higher ones):

- ``settings``: configuration (``params.yaml``), the workspace and process settings;
- ``adapters``: one module per external system (MLflow, DVC, Great Expectations, ...);
- ``governance``: deletion requests, batches, the audit trail, lineage and promotion;
- ``tasks`` and ``flows``: the Prefect tasks and flows (the repository's top-level ``tasks/``
  and ``flows/`` folders, installed under this package), and ``stages``, DVC's stages;
- ``cli``: the ``unsir`` command, above everything else.
"""
