#!/usr/bin/env bash
# Build deployment/Dockerfile with podman and run the image the way production does; print every check.
#
#   deployment/scripts/verify-image.sh                       # real base image, PyTorch index + PyPI
#   BASE=standin WHEEL_MIRROR=local deployment/scripts/verify-image.sh   # no registry / PyTorch index access
#
# Needs root (or sudo) with podman; BASE=standin also needs debootstrap and a Debian mirror, WHEEL_MIRROR=local
# needs pip and python3 on the host. Heavy (a torch build, ~3 min and ~2 GB of image storage): not part of
# `make test`. Results: deployment/verification/image.md. What it does:
#
#  1. base image: BASE=official (default) pulls docker.io/library/python:3.11-slim-bookworm. BASE=standin
#     builds a stand-in instead where no registry is reachable: debootstrap bookworm (minbase) + Debian's
#     python3 3.11 + venv + pip, /usr/local/bin/python -> python3, imported under the official name (the
#     Dockerfile's FROM) and labelled verify.standin-base so it is never mistaken for the real one (BASE=official
#     refuses to use it and pulls the real image over it).
#  2. wheels: WHEEL_MIRROR= (default) builds with the Dockerfile's own indexes (download.pytorch.org, PyPI).
#     WHEEL_MIRROR=local `pip download`s torch (CPU) and every dependency on the host (so any pip
#     configuration there applies: proxies, find-links, MIRROR_PIP_ARGS), writes a PEP 503 index, serves it
#     on 127.0.0.1:MIRROR_PORT and builds with TORCH_INDEX_URL and PIP_INDEX_URL pointing at it
#     (--network host). Only wheels for Linux x86_64, CPython 3.11, glibc <= 2.36 (bookworm) are taken.
#  3. build: podman build --format docker (OCI format drops HEALTHCHECK), timed; then a probe build checks
#     that deployment/Dockerfile.dockerignore limits the context to pyproject.toml, README.md, anomaly_ae/.
#  4. model: deployment/scripts/bootstrap_model.py run inside the image (as compose's trainer does) into a
#     sqlite MLflow store + artifact dir on the host (EPOCHS, TRAIN_ROWS small by default).
#  5. run: --read-only --tmpfs /tmp --tmpfs /run/anomaly-ae, default user, store mounted read-only,
#     port on 127.0.0.1; checks health, auth, scoring, /metrics, uid, read-only root, SIGTERM.
#
# Sandboxes: where the cgroup hierarchy is hybrid (v1 + an empty v2 at /sys/fs/cgroup/unified) crun
# refuses to start containers, so runc is used (PODMAN_RUNTIME overrides); without CAP_SYS_RESOURCE podman
# cannot set its default nofile/nproc limits, so lower ones are passed (ULIMITS overrides, "" for none).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BASE=${BASE:-official}                          # official | standin
WHEEL_MIRROR=${WHEEL_MIRROR:-}                  # "" | local
WORK=${WORK:-/var/tmp/anomaly-ae-verify}        # stand-in rootfs, wheels, model store, logs
IMAGE=${IMAGE:-localhost/anomaly-ae:verify}
BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_VERSION=${TORCH_VERSION:-$(sed -n 's/^ARG TORCH_VERSION=//p' "$REPO/deployment/Dockerfile")}
MIRROR_PORT=${MIRROR_PORT:-18765}
MIRROR_PIP_ARGS=${MIRROR_PIP_ARGS:-}            # e.g. "--extra-index-url https://download.pytorch.org/whl/cpu"
HOST_PORT=${HOST_PORT:-18000}
EPOCHS=${EPOCHS:-5}
TRAIN_ROWS=${TRAIN_ROWS:-2000}
NICE=${NICE:-10}
NAME=anomaly-ae-verify

[[ $(id -u) == 0 ]] || { echo "run as root (podman with the system store)" >&2; exit 2; }
command -v podman >/dev/null || { echo "podman not found (Debian: apt-get install podman)" >&2; exit 2; }
mkdir -p "$WORK"
LOG=$WORK/logs; mkdir -p "$LOG"
RESULTS=$WORK/results.txt; : >"$RESULTS"
FAILED=0

say() { printf '%s\n' "$*" | tee -a "$RESULTS"; }
check() {  # check NAME COMMAND...: PASS when the command succeeds
  local name=$1; shift
  if "$@" >>"$LOG/checks.log" 2>&1; then say "PASS  $name"; else say "FAIL  $name"; FAILED=1; fi
}
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

# ---------------------------------------------------------------------------------------- sandbox quirks
if [[ -z ${PODMAN_RUNTIME+x} ]]; then
  PODMAN_RUNTIME=
  if [[ $(stat -fc %T /sys/fs/cgroup) == tmpfs ]] && grep -q ' /sys/fs/cgroup/unified cgroup2 ' /proc/mounts \
     && command -v runc >/dev/null; then PODMAN_RUNTIME=runc; fi
fi
if [[ -z ${ULIMITS+x} ]]; then
  ULIMITS=
  capeff=$(awk '/^CapEff/ {print $2}' /proc/self/status)
  if (( (16#$capeff >> 24 & 1) == 0 )); then  # no CAP_SYS_RESOURCE
    ULIMITS="--ulimit nofile=$(ulimit -Hn):$(ulimit -Hn) --ulimit nproc=4096:4096"
  fi
fi
PODMAN=(podman ${PODMAN_RUNTIME:+--runtime "$PODMAN_RUNTIME"})
read -r -a ULIMIT_ARGS <<<"$ULIMITS"

SERVER_PID=
cleanup() {
  "${PODMAN[@]}" rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null || true
}
trap cleanup EXIT

say "# anomaly-ae image verification, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "repo commit: $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- deployment/Dockerfile \
  || echo ' (deployment/Dockerfile modified)')"
say "host: $(. /etc/os-release; echo "$PRETTY_NAME"), kernel $(uname -r), $(nproc) CPUs"
say "podman $(podman version --format '{{.Client.Version}}'), runtime ${PODMAN_RUNTIME:-default}, ulimits '${ULIMITS}'"
say "BASE=$BASE WHEEL_MIRROR=${WHEEL_MIRROR:-none} TORCH_VERSION=$TORCH_VERSION"

# ---------------------------------------------------------------------------------------- 1. base image
standin_label() { podman image inspect --format '{{index .Labels "verify.standin-base"}}' "$BASE_IMAGE" 2>/dev/null || true; }
PULL=missing
if [[ $BASE == standin ]]; then
  PULL=never
  if [[ -z $(standin_label) || ${REBUILD_BASE:-0} == 1 ]]; then
    command -v debootstrap >/dev/null || { echo "debootstrap not found (apt-get install debootstrap)" >&2; exit 2; }
    t0=$(now)
    rm -rf "$WORK/rootfs"
    nice -n "$NICE" debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$WORK/rootfs" "$DEBIAN_MIRROR" >"$LOG/debootstrap.log" 2>&1
    chroot "$WORK/rootfs" /bin/sh -c 'ln -sf /usr/bin/python3 /usr/local/bin/python \
      && ln -sf /usr/bin/python3 /usr/local/bin/python3 && apt-get clean && rm -rf /var/lib/apt/lists/*'
    pyver=$(chroot "$WORK/rootfs" python --version | cut -d' ' -f2)
    tar -C "$WORK/rootfs" -c . | podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'ENV LANG=C.UTF-8' \
      --change "LABEL verify.standin-base=\"debootstrap bookworm minbase + Debian python3 $pyver (not the official image)\"" \
      --change 'CMD ["python3"]' - "$BASE_IMAGE" >"$LOG/import.log"
    rm -rf "$WORK/rootfs"
    say "stand-in base built in $(secs "$t0" "$(now)") s"
  fi
  say "base: STAND-IN $BASE_IMAGE = $(standin_label), $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes"
else
  if [[ -n $(standin_label) ]]; then say "base: replacing the local stand-in with the real image"; fi
  podman pull "$BASE_IMAGE" >"$LOG/pull.log"
  [[ -z $(standin_label) ]] || { echo "$BASE_IMAGE is still the stand-in" >&2; exit 1; }
  say "base: official $BASE_IMAGE $(podman image inspect --format '{{.Digest}}' "$BASE_IMAGE")"
fi

# ---------------------------------------------------------------------------------------- 2. wheels
BUILD_ARGS=()
if [[ $WHEEL_MIRROR == local ]]; then
  t0=$(now)
  mkdir -p "$WORK/mirror/wheels"
  python3 - "$REPO/pyproject.toml" >"$WORK/mirror/requirements.txt" <<'EOF'
import sys, tomllib
d = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(d["project"]["dependencies"] + d["build-system"]["requires"]))
EOF
  platforms=()  # pip does not widen a manylinux_2_36 --platform to older glibc tags itself
  for y in $(seq 36 -1 5); do platforms+=(--platform "manylinux_2_${y}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  # shellcheck disable=SC2086  # MIRROR_PIP_ARGS is a list of options
  nice -n "$NICE" python3 -m pip download -q -d "$WORK/mirror/wheels" --only-binary=:all: \
    "${platforms[@]}" --python-version 3.11 --implementation cp --abi cp311 \
    $MIRROR_PIP_ARGS "torch==${TORCH_VERSION}+cpu" -r "$WORK/mirror/requirements.txt" >"$LOG/pip-download.log" 2>&1
  python3 - "$WORK/mirror" <<'EOF'
import hashlib, html, pathlib, re, sys
root = pathlib.Path(sys.argv[1]); simple = root / "simple"; projects = {}
for f in sorted((root / "wheels").glob("*.whl")):
    projects.setdefault(re.sub(r"[-_.]+", "-", f.name.split("-")[0]).lower(), []).append(f)
simple.mkdir(exist_ok=True)
(simple / "index.html").write_text("".join(f'<a href="{n}/">{n}</a>\n' for n in projects))
for name, files in projects.items():
    (simple / name).mkdir(exist_ok=True)
    (simple / name / "index.html").write_text("".join(
        f'<a href="../../wheels/{html.escape(f.name)}#sha256={hashlib.sha256(f.read_bytes()).hexdigest()}">'
        f"{html.escape(f.name)}</a>\n" for f in files))
EOF
  python3 -m http.server "$MIRROR_PORT" --bind 127.0.0.1 --directory "$WORK/mirror" >"$LOG/mirror.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$MIRROR_PORT/simple/" >/dev/null && break; sleep 0.1; done
  say "wheel mirror: $(ls "$WORK/mirror/wheels" | wc -l) wheels ($(du -sh "$WORK/mirror/wheels" | cut -f1)) on 127.0.0.1:$MIRROR_PORT, prepared in $(secs "$t0" "$(now)") s"
  BUILD_ARGS=(--network host --build-arg "TORCH_INDEX_URL=http://127.0.0.1:$MIRROR_PORT/simple"
              --build-arg "PIP_INDEX_URL=http://127.0.0.1:$MIRROR_PORT/simple")
fi

# ---------------------------------------------------------------------------------------- 3. build
t0=$(now)
if ! (cd "$REPO" && nice -n "$NICE" "${PODMAN[@]}" build --format docker --pull="$PULL" "${ULIMIT_ARGS[@]}" \
        "${BUILD_ARGS[@]}" -f deployment/Dockerfile -t "$IMAGE" . >"$LOG/build.log" 2>&1); then
  say "FAIL  build (see $LOG/build.log)"; tail -20 "$LOG/build.log"; exit 1
fi
say "PASS  build: $(secs "$t0" "$(now)") s ($(grep -c 'Using cache' "$LOG/build.log" || true) of \
$(grep -c '^\[[0-9]/[0-9]\] STEP' "$LOG/build.log" || true) steps from the layer cache)"
say "image: $IMAGE $(podman image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-12), \
$(podman image inspect --format '{{.Size}}' "$IMAGE") bytes ($(podman images --format '{{.Size}}' "$IMAGE"))"
say "installed: $("${PODMAN[@]}" run --rm "${ULIMIT_ARGS[@]}" --entrypoint python "$IMAGE" -c \
  'import sys, torch, mlflow, fastapi; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, mlflow {mlflow.__version__}, fastapi {fastapi.__version__}")' 2>/dev/null)"

inspect() { podman image inspect --format "$1" "$IMAGE"; }
check "image config: USER 10001:10001" test "$(inspect '{{.User}}')" = 10001:10001
check "image config: HEALTHCHECK kept (docker format)" grep -q readyz <<<"$(inspect '{{json .HealthCheck}}')"
check "image config: STOPSIGNAL SIGTERM, entrypoint the service" \
  test "$(inspect '{{.Config.StopSignal}} {{json .Config.Entrypoint}}')" = 'SIGTERM ["python","-m","anomaly_ae.service.command"]'
no_secret_env() { ! inspect '{{range .Config.Env}}{{println .}}{{end}}' | cut -d= -f1 | grep -Ei 'KEY|SECRET|PASSW|TOKEN|CREDENTIAL'; }
check "image config: no key/secret/token/password in ENV" no_secret_env
check "image holds no /src, no compiler, no pip cache" "${PODMAN[@]}" run --rm "${ULIMIT_ARGS[@]}" --entrypoint sh "$IMAGE" -c \
  'test ! -e /src && ! command -v gcc && ! command -v cc && test ! -d /root/.cache/pip && test ! -d /tmp/.cache/pip'
check "the image runs the CLI too (--entrypoint anomaly-ae --help)" \
  "${PODMAN[@]}" run --rm "${ULIMIT_ARGS[@]}" --entrypoint anomaly-ae "$IMAGE" --help

# the build context: what a COPY . sees with the same .dockerignore next to the Dockerfile
probe=$WORK/context-probe; mkdir -p "$probe"
cp "$REPO/deployment/Dockerfile.dockerignore" "$probe/Dockerfile.dockerignore"
printf 'FROM %s\nCOPY . /ctx\nRUN cd /ctx && find . -mindepth 1 -maxdepth 1 | sort && echo files=$(find . -type f | wc -l) pycache=$(find . -name __pycache__ -o -name "*.pyc" | wc -l)\n' \
  "$BASE_IMAGE" >"$probe/Dockerfile"
(cd "$REPO" && "${PODMAN[@]}" build --no-cache --pull=never "${ULIMIT_ARGS[@]}" -f "$probe/Dockerfile" \
  -t localhost/anomaly-ae-context-probe . >"$LOG/context-probe.log" 2>&1) || true
podman rmi -f localhost/anomaly-ae-context-probe >/dev/null 2>&1 || true
top=$(grep -E '^\./' "$LOG/context-probe.log" | tr '\n' ' ')
check "build context = pyproject.toml README.md anomaly_ae/ only (Dockerfile.dockerignore honoured): $top" \
  test "$top" = "./README.md ./anomaly_ae ./pyproject.toml "
check "build context carries no __pycache__/*.pyc" grep -q 'pycache=0$' "$LOG/context-probe.log"

# ---------------------------------------------------------------------------------------- 4. model
STORE=$WORK/store
rm -rf "$STORE"; mkdir -p "$STORE"; chown 10001:10001 "$STORE"
t0=$(now)
if "${PODMAN[@]}" run --rm "${ULIMIT_ARGS[@]}" --read-only --tmpfs /tmp -v "$STORE:/store" -w /store \
     -v "$REPO/deployment/scripts/bootstrap_model.py:/opt/anomaly-ae/bootstrap_model.py:ro" \
     -e MLFLOW_TRACKING_URI=sqlite:////store/mlflow.db -e MODEL_NAME=telemetry -e MODEL_ALIAS=champion \
     -e EPOCHS="$EPOCHS" -e TRAIN_ROWS="$TRAIN_ROWS" --entrypoint python "$IMAGE" /opt/anomaly-ae/bootstrap_model.py \
     >"$LOG/bootstrap.log" 2>&1; then
  say "PASS  model trained, registered, promoted inside the image ($EPOCHS epochs, $TRAIN_ROWS rows): $(secs "$t0" "$(now)") s"
else
  say "FAIL  model bootstrap (see $LOG/bootstrap.log)"; tail -20 "$LOG/bootstrap.log"; exit 1
fi

# ---------------------------------------------------------------------------------------- 5. run
KEY=$(openssl rand -hex 24); ADMIN_KEY=$(openssl rand -hex 24)
URL=http://127.0.0.1:$HOST_PORT
t0=$(now)
"${PODMAN[@]}" run -d --name "$NAME" "${ULIMIT_ARGS[@]}" --read-only --tmpfs /tmp --tmpfs /run/anomaly-ae \
  -p "127.0.0.1:$HOST_PORT:8000" -v "$STORE:/store:ro" \
  -e MLFLOW_TRACKING_URI=sqlite:////store/mlflow.db -e ANOMALY_AE_MODEL_URI=models:/telemetry@champion \
  -e ANOMALY_AE_API_KEYS="$KEY" -e ANOMALY_AE_ADMIN_KEYS="$ADMIN_KEY" "$IMAGE" >"$LOG/run.log" 2>&1
healthy=
for _ in $(seq 240); do  # the image's HEALTHCHECK, run by hand (no systemd timers here)
  if podman healthcheck run "$NAME" >/dev/null 2>&1; then healthy=$(secs "$t0" "$(now)"); break; fi
  [[ $(podman inspect --format '{{.State.Running}}' "$NAME") == true ]] || break
  sleep 0.5
done
if [[ -n $healthy ]]; then say "PASS  healthy (HEALTHCHECK -> /readyz) ${healthy} s after podman run"
else say "FAIL  never healthy"; FAILED=1; podman logs "$NAME" 2>&1 | tail -20; exit 1; fi

RECORDS='{"records": [
  {"mode": "day", "cpu_util_pct": 55, "mem_util_pct": 60, "requests_per_s": 800, "latency_ms": 900,
   "error_rate_pct": 7, "disk_io_mb_s": 40, "net_in_mb_s": 70, "temperature_c": 55},
  {"mode": "day", "cpu_util_pct": 35, "mem_util_pct": 50, "requests_per_s": 400, "latency_ms": 80,
   "error_rate_pct": 0.2, "disk_io_mb_s": 20, "net_in_mb_s": 30, "temperature_c": 45}],
  "ids": ["outlier", "normal"], "explain": true, "top_k": 3}'
code() { curl -s -o "$LOG/body" -w '%{http_code}' "$@"; }
score_ok() {
  [[ $(code -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$RECORDS" "$URL/v1/score") == 200 ]] &&
  python3 -c "import json; r = json.load(open('$LOG/body')); print(r); \
assert r['n_rows'] == 2 and all(isinstance(x['score'], float) for x in r['results']) \
and r['results'][0]['is_anomaly'] and not r['results'][1]['is_anomaly'] \
and len(r['results'][0]['top_features']) == 3"
}
check "GET /healthz 200" test "$(code "$URL/healthz")" = 200
check "GET /readyz 200" test "$(code "$URL/readyz")" = 200
check "POST /v1/score with a key: 200, two scores, the outlier flagged (with its top 3 features), the normal row not" score_ok
check "POST /v1/score without a key: 401" \
  test "$(code -H 'Content-Type: application/json' -d "$RECORDS" "$URL/v1/score")" = 401
check "POST /v1/score with a wrong key: 401" test "$(code -H "Authorization: Bearer $(openssl rand -hex 24)" \
  -H 'Content-Type: application/json' -d "$RECORDS" "$URL/v1/score")" = 401
check "GET /v1/model with a key: 200" test "$(code -H "Authorization: Bearer $KEY" "$URL/v1/model")" = 200
metrics_ok() {
  curl -sf "$URL/metrics" >"$LOG/metrics.txt" && grep -q '^anomaly_ae_rows_scored_total 2.0' "$LOG/metrics.txt" &&
  grep -q '^anomaly_ae_model_ready 1.0' "$LOG/metrics.txt"
}
check "GET /metrics 200 with anomaly_ae_rows_scored_total 2 and model_ready 1" metrics_ok
runs_as_10001() {
  grep -E '^(Uid|Gid):' "/proc/$(podman inspect --format '{{.State.Pid}}' "$NAME")/status"
  [[ $(grep -E '^Uid:' "/proc/$(podman inspect --format '{{.State.Pid}}' "$NAME")/status" | xargs) == "Uid: 10001 10001 10001 10001" ]] &&
  [[ $(podman exec "$NAME" id -u):$(podman exec "$NAME" id -g) == 10001:10001 ]]
}
check "process (PID 1 of the container) runs as uid/gid 10001" runs_as_10001
check "writes to /tmp and /run/anomaly-ae/metrics succeed" podman exec "$NAME" sh -c \
  'touch /tmp/w /run/anomaly-ae/metrics/w && rm /tmp/w /run/anomaly-ae/metrics/w'
for p in / /opt/venv /etc /usr/local/bin /store; do
  check "write to $p refused" podman exec "$NAME" sh -c "! touch $p/verify-write 2>/dev/null"
done
check "root filesystem mounted read-only" podman exec "$NAME" sh -c "grep -Eq '^overlay / overlay ro,' /proc/mounts"

t0=$(now)
podman stop -t 40 "$NAME" >/dev/null 2>&1
stopped=$(secs "$t0" "$(now)")
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
podman logs "$NAME" >"$LOG/service.log" 2>&1 || true
check "SIGTERM (podman stop -t 40): exit code $exit_code after $stopped s, graceful shutdown logged" \
  test "$exit_code:$(grep -c 'Application shutdown complete' "$LOG/service.log")" = 0:1

say "disk: podman storage $(du -sh /var/lib/containers/storage 2>/dev/null | cut -f1), work dir $(du -sh "$WORK" | cut -f1)"
if (( FAILED )); then say "RESULT: FAILED (details in $LOG/checks.log)"; exit 1; fi
say "RESULT: all checks passed"
