# MLflow tracking server: PostgreSQL backend store, artifacts proxied to S3 (MinIO), basic auth.
# Built by infra/compose/compose.yaml (context: this folder).
FROM python:3.11-slim

# `mlflow[auth]` brings Flask-WTF, which the basic-auth app needs for its CSRF protection.
# The client in the project's venv is 3.17.2 too: keep server and client on one version.
RUN pip install --no-cache-dir \
        "mlflow[auth]==3.17.2" \
        "psycopg2-binary==2.9.13" \
        "boto3==1.44.5"

RUN useradd --create-home --uid 1000 mlflow
COPY --chmod=0755 mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh
USER mlflow
WORKDIR /home/mlflow

EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/mlflow-entrypoint.sh"]
