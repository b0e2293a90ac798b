#!/usr/bin/env bash
# One command for the whole stack: writes deployment/.env with fresh random secrets the first time
# (never overwrites it), then builds and starts docker-compose.yml. Extra arguments go to `up`.
#
#   deployment/scripts/compose-up.sh            # build + start in the background
#   docker compose -f deployment/docker-compose.yml down      # stop (add -v to drop the data volumes)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
env_file="$here/.env"

random() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }

if [ ! -f "$env_file" ]; then
  umask 077
  {
    echo "COMPOSE_PROJECT_NAME=anomaly-ae"
    echo "POSTGRES_PASSWORD=$(random)"
    echo "MINIO_ROOT_USER=anomaly-ae"
    echo "MINIO_ROOT_PASSWORD=$(random)"
    echo "GRAFANA_ADMIN_PASSWORD=$(random)"
    echo "ANOMALY_AE_API_KEYS=$(random)"
    echo "ANOMALY_AE_ADMIN_KEYS=$(random)"
  } > "$env_file"
  echo "wrote $env_file with new random secrets (keep it private; it is git-ignored)"
fi

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  compose=(docker-compose)
fi
"${compose[@]}" -f "$here/docker-compose.yml" --env-file "$env_file" up -d --build "$@"
cat <<MSG
started. scoring API  http://127.0.0.1:8000/docs   (key: ANOMALY_AE_API_KEYS in $env_file)
         MLflow       http://127.0.0.1:5000
         Prometheus   http://127.0.0.1:9090/alerts
         Grafana      http://127.0.0.1:3000       (admin / GRAFANA_ADMIN_PASSWORD in $env_file)
the first model is trained by the 'trainer' service: docker compose -f $here/docker-compose.yml logs -f trainer
MSG
