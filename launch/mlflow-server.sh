#!/usr/bin/env bash
# Start an MLflow tracking server for ctsl_hpc sweeps (one worker, job execution off) and print its URL.
#
#   launch/mlflow-server.sh [--backend-store-uri URI] [--artifact-root DIR] [--host HOST] [--port PORT]
#                           [--auth-config basic_auth.ini] [--tls-cert cert.pem --tls-key key.pem] [--no-auth]
#
# Defaults (override with the flags or these variables):
#   CTSL_MLFLOW_DIR            $PWD/mlflow  (folder for the default SQLite file and artifacts)
#   CTSL_MLFLOW_BACKEND        sqlite:///$CTSL_MLFLOW_DIR/mlflow.db; put SQLite on local disk or use
#                              postgresql://user:pass@dbhost/mlflow or mysql://... on a cluster
#   CTSL_MLFLOW_ARTIFACTS      $CTSL_MLFLOW_DIR/artifacts  (shared storage: jobs upload through the server)
#   CTSL_MLFLOW_HOST           127.0.0.1: this machine only. Jobs on other nodes need --host 0.0.0.0
#                              (every interface): then --auth-config is required (every client logs in,
#                              or --no-auth where the network is yours alone), with --tls-cert/--tls-key
#                              so that the passwords do not cross it in clear text.
#   CTSL_MLFLOW_PORT           5000
# On a cluster, e.g.:
#   sbatch --time=2-0 --cpus-per-task=2 --mem=4G --wrap "launch/mlflow-server.sh --host 0.0.0.0 --auth-config ~/mlflow/basic_auth.ini"
# then point jobs at it: export MLFLOW_TRACKING_URI=http://<node>:5000 (printed below).
set -euo pipefail

dir="${CTSL_MLFLOW_DIR:-$PWD/mlflow}"
backend="${CTSL_MLFLOW_BACKEND:-sqlite:///$dir/mlflow.db}"
artifacts="${CTSL_MLFLOW_ARTIFACTS:-$dir/artifacts}"
host="${CTSL_MLFLOW_HOST:-127.0.0.1}"
port="${CTSL_MLFLOW_PORT:-5000}"
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --backend-store-uri) backend="$2"; shift 2 ;;
    --artifact-root) artifacts="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --auth-config|--tls-cert|--tls-key) extra+=("$1" "$2"); shift 2 ;;
    --no-auth) extra+=(--no-auth); shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "mlflow-server.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$dir"
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec python -m ctsl_hpc.launch mlflow-server --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
  --host "$host" --port "$port" "${extra[@]}"
