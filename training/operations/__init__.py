"""The tracking server's operations: local PostgreSQL (MLflow's and Optuna's database), the `mlflow server`
in front of it, its certificates, and the review UIs. Used by the command line only."""
