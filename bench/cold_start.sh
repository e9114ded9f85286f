#!/usr/bin/env bash
# bench/cold_start.sh — how long `make demo` takes on a cold machine, and again warm, as the README states.
#
#   bench/cold_start.sh [scratch dir]      # or: make bench-cold   (root; ~25 min on 2 idle cores)
#
# A clean clone of this checkout's HEAD runs `make demo` with every cache the project fills pointed into an
# empty scratch directory, so nothing built earlier on this machine is reused:
#   KUBETRAIN_CACHE (binaries, Go build dirs, image archives), KUBETRAIN_RUN_DIR (the cluster), GOCACHE and
#   GOMODCACHE (the Go build and module caches), UV_CACHE_DIR / PIP_CACHE_DIR (wheels), and
#   CONTAINERS_STORAGE_CONF (buildah's image store, so even the python:3.11-slim stand-in is rebuilt).
# Then `make demo` again on the running cluster, and warm: `dev-cluster reset` (a new, empty cluster) and `make demo`
# with every cache full, so the iris run trains again. Debian packages (`make tools`) are not uninstalled: on a
# brand-new machine add their apt-get time. The machine must be otherwise idle for the figure to mean anything:
# the load average before, during and after is recorded beside it.
#
# Prints the times and writes bench/reports/cold-start-<date>.md and cold-start-latest.md. The scratch
# directory (default /tmp/kubetrain-cold-start) is removed first and kept afterwards for inspection; its
# cluster is stopped.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRATCH=${1:-/tmp/kubetrain-cold-start}
REPORTS=$REPO/bench/reports
[[ $(id -u) == 0 ]] || { echo "cold_start: needs root (the dev cluster)" >&2; exit 1; }

if [[ -d $SCRATCH ]]; then # an earlier run: its cluster down, its buildah mounts gone, then wipe it
    if [[ -x $SCRATCH/repo/hack/dev-cluster ]]; then
        KUBETRAIN_CACHE=$SCRATCH/cache KUBETRAIN_RUN_DIR=$SCRATCH/run "$SCRATCH/repo/hack/dev-cluster" down \
            >/dev/null 2>&1 || true
    fi
    awk -v d="$SCRATCH/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    chmod -R u+w "$SCRATCH" 2>/dev/null || true # the Go module cache is read-only
    rm -rf --one-file-system "$SCRATCH"
fi
mkdir -p "$SCRATCH"
git clone -q "$REPO" "$SCRATCH/repo"
commit=$(git -C "$SCRATCH/repo" rev-parse --short HEAD)
cat >"$SCRATCH/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$SCRATCH/containers/storage"
runroot = "$SCRATCH/containers/run"
EOF
export KUBETRAIN_CACHE=$SCRATCH/cache KUBETRAIN_RUN_DIR=$SCRATCH/run GOCACHE=$SCRATCH/gocache \
    GOMODCACHE=$SCRATCH/gomod UV_CACHE_DIR=$SCRATCH/uv PIP_CACHE_DIR=$SCRATCH/pip \
    CONTAINERS_STORAGE_CONF=$SCRATCH/storage.conf
unset KUBETRAIN_IMAGE_CACHE

load() { cut -d' ' -f1-3 /proc/loadavg; }
run_demo() { # <label> -> seconds on stdout; the log in $SCRATCH/<label>.log
    local start rc
    start=$(date +%s)
    rc=0
    (cd "$SCRATCH/repo" && make demo) >"$SCRATCH/$1.log" 2>&1 || rc=$?
    if ((rc != 0)); then
        tail -n 40 "$SCRATCH/$1.log" >&2
        echo "cold_start: make demo ($1) failed with $rc (log: $SCRATCH/$1.log)" >&2
        exit 1
    fi
    echo $(($(date +%s) - start))
}

load_before=$(load)
echo "cold_start: $commit, cold make demo (load before: $load_before) ..." >&2
cold=$(run_demo cold)
load_cold=$(load)
echo "cold_start: cold ${cold}s; make demo again on the running cluster ..." >&2
again=$(run_demo again)
# Warm: every cache full but the cluster new (reset wipes its etcd and run dir), so the iris run trains again.
KUBETRAIN_CACHE=$SCRATCH/cache KUBETRAIN_RUN_DIR=$SCRATCH/run "$SCRATCH/repo/hack/dev-cluster" reset >/dev/null 2>&1
echo "cold_start: again ${again}s; warm make demo from an empty cluster ..." >&2
warm=$(run_demo warm)
load_after=$(load)
KUBETRAIN_CACHE=$SCRATCH/cache KUBETRAIN_RUN_DIR=$SCRATCH/run "$SCRATCH/repo/hack/dev-cluster" down >/dev/null 2>&1 || true

# The steps of the cold run, from the scripts' own progress lines ("[build-k8s + 828s] ... done").
steps=$(grep -E '^\[(build-k8s|demo|dev-cluster) *\+ *[0-9]+s\]|^build-images: .*(built in|cached)' "$SCRATCH/cold.log" \
    | grep -E 'done|ready|built in|cached|project images|helm install' | sed 's/^/    /' || true)
mmss() { printf '%d min %02d s' $(($1 / 60)) $(($1 % 60)); }
day=$(date -u +%Y-%m-%d)
mkdir -p "$REPORTS"
{
    echo "# Cold start: \`make demo\` from nothing, then again"
    echo
    echo "Commit \`$commit\`, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores. Produced by \`bench/cold_start.sh\`."
    echo
    echo "| run | time | load average (1, 5, 15 min) at its end |"
    echo "|---|---|---|"
    echo "| cold (every cache empty) | **$(mmss "$cold")** | $load_cold (before: $load_before) |"
    echo "| warm (caches full, cluster reset: a new cluster, the iris run trained again) | **$(mmss "$warm")** | $load_after |"
    echo "| again (cluster still running, nothing to do) | $(mmss "$again") | |"
    echo
    echo "Cold steps (seconds since each script started):"
    echo
    echo '```'
    echo "$steps"
    echo '```'
} >"$REPORTS/cold-start-$day.md"
cp "$REPORTS/cold-start-$day.md" "$REPORTS/cold-start-latest.md"
echo "cold make demo: $(mmss "$cold") (load at end $load_cold); warm: $(mmss "$warm") (load $load_after)"
echo "report: bench/reports/cold-start-$day.md"
