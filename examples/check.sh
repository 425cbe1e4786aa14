#!/usr/bin/env bash
# Checks the examples a user copies (examples/envoy, examples/istio), each with the tool that reads it:
# Envoy's message types (envoy-data-plane) for the Envoy configuration, Istio's CRD schema for the
# EnvoyFilter, Sluice itself (`sluice check-config`) for the domain files; then breaks each example
# in known ways and fails unless every break is caught (see examples/check/envoy_configs.py).
# Tools it lacks are installed into .tools/ (git-ignored) on the first run; later runs reuse them.
# Sluice: $SLUICE_BIN, else target/debug/sluice (which `cargo test` builds), built if older than src/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools="$root/.tools"
mkdir -p "$tools"

# envoy-data-plane and PyYAML, pinned, in a venv of their own.
venv="$tools/examples-venv"
requirements=examples/check/requirements.txt
if [[ ! -x $venv/bin/python ]] || ! cmp -s "$requirements" "$venv/requirements.txt"; then
  echo "== installing $requirements into .tools/examples-venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

# Istio's CRD schema (@kubernetes-models/istio), TypeScript and yaml, from the lock file.
node_dir="$tools/examples-node"
if [[ ! -d $node_dir/node_modules ]] || ! cmp -s examples/check/package-lock.json "$node_dir/package-lock.json"; then
  echo "== installing examples/check/package-lock.json into .tools/examples-node"
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp examples/check/package.json examples/check/package-lock.json "$node_dir/"
  (cd "$node_dir" && npm ci --silent --no-audit --no-fund)
fi

# yamllint, from Debian.
if ! command -v yamllint >/dev/null; then
  echo "== installing yamllint (apt)"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y yamllint
fi

sluice="${SLUICE_BIN:-target/debug/sluice}"
if [[ -z ${SLUICE_BIN:-} ]] && { [[ ! -x $sluice ]] || [[ -n $(find src lua proto build.rs Cargo.toml Cargo.lock -newer "$sluice" -print -quit) ]]; }; then
  echo "== cargo build --bin sluice (no binary newer than the sources)"
  cargo build --quiet --bin sluice
fi

echo "== yamllint examples/"
yamllint -s -d '{extends: default, rules: {line-length: {max: 120, allow-non-breakable-inline-mappings: true}, document-start: disable}}' examples/

"$venv/bin/python" examples/check/envoy_configs.py "$sluice" "$node_dir/node_modules"

echo "== all example checks passed"
