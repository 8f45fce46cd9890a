"""What the shared server of the suite's champions (conftest `served_champions`) is started with and asked."""

SEQUENCES = [[[0.3, 1], [0.9, 0], [0.5, 1]], [[0.1, 0]] * 7 + [[0.7, 1], [0.2, 1]]]  # mha-adding instances
XS = [0.5, 2.5, 4.9]  # nw-sine instances

# Credentials a worker's shell holds (docs/scale-out.md): TorchServe and its workers must start without them.
CREDENTIALS = {
    "MLFLOW_TRACKING_USERNAME": "tuner",
    "MLFLOW_TRACKING_PASSWORD": "s3cret-mlflow",
    "MLFLOW_TRACKING_URI": "http://tuner:s3cret-uri@127.0.0.1:9",
    "PGPASSWORD": "s3cret-pg",
    "PGPASSFILE": "/somewhere/pgpass",
}
