# Shared by build.sh and cluster.sh: pinned versions, where the cache lives, and the Go settings
# every build uses. Sourced, never run.
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
set -a
# shellcheck source=versions.env
source "$E2E_DIR/versions.env"
set +a

# Everything built or downloaded lives outside the repository, keyed by version, so a second run
# (and every other checkout on the machine) reuses it.
E2E_CACHE=${HOTSHARD_E2E_CACHE:-$HOME/.cache/hotshard-e2e}
KUBE_BIN=$E2E_CACHE/kubernetes-$KUBERNETES_VERSION/bin
ETCD_BIN=$E2E_CACHE/etcd-$ETCD_VERSION/bin
KWOK_BIN=$E2E_CACHE/kwok-$KWOK_VERSION/bin
HELM_BIN=$E2E_CACHE/helm-$HELM_VERSION/bin
E2E_LOGS=$E2E_CACHE/logs

GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
export GOMODCACHE=$E2E_CACHE/go/mod
export GOCACHE=$E2E_CACHE/go/build
# The pinned go.mod files name newer patch toolchains; build with the installed one, never fetch.
export GOTOOLCHAIN=local
# Two cores are shared with other work: cap Go's parallelism (go build -p follows GOMAXPROCS).
export GOMAXPROCS=${GOMAXPROCS:-2}
# Static binaries, no C toolchain needed; upstream builds its server binaries the same way.
export CGO_ENABLED=0
# Module files read-only by default make `rm -rf` of the cache fail; keep them writable.
export GOFLAGS=-modcacherw
