"""Checks the Envoy examples against Envoy's own message types, and their domain files against Sluice.

Run by examples/check.sh, which installs the pinned packages, from the repository root:
  python examples/check/envoy_configs.py SLUICE_BINARY NODE_MODULES

For each example, from the repository root:
- An Envoy bootstrap parses as envoy.config.bootstrap.v3.Bootstrap with envoy-data-plane's message
  types: unknown fields, wrong types, unknown enum values, bad durations are errors, and every
  `typed_config` (google.protobuf.Any) is parsed as the message its "@type" names, nested ones too;
  an "@type" no message answers to is an error. The rate limit service's cluster must be a static
  cluster that speaks HTTP/2.
- An Istio EnvoyFilter's patch values parse as the Envoy message their applyTo says (HTTP_FILTER: an
  HttpFilter, VIRTUAL_HOST: a VirtualHost, ...), the same way. (Its Kubernetes fields are checked
  against Istio's CRD schema by envoyfilter_schema.mjs.)
- The rate limit filter's domain has a domain file, and every descriptor the rate_limits actions can
  send (their keys, in order) reaches a node with a rate_limit in that file's descriptor tree.
- Every domain file loads in Sluice: `sluice check-config` on the example's Sluice configuration, or,
  for chart values, on a configuration naming the files written out from envoy.domains.
Then it breaks each example in the ways listed in MUTATIONS and fails unless every check catches
what it should, so that a check that stops checking is noticed.
"""

import dataclasses
import functools
import importlib
import pkgutil
import subprocess
import sys
import tempfile
from pathlib import Path

import betterproto2
import envoy_data_plane
import yaml
from envoy_data_plane.envoy.config.route.v3 import RateLimit as RouteRateLimit
from envoy_data_plane.envoy.extensions.filters.http.ratelimit.v3 import RateLimit as RateLimitFilter

NODE_CHECK = Path(__file__).with_name("envoyfilter_schema.mjs")


def register_all_types():
    """Imports every module of envoy-data-plane, so that any "@type" resolves to its message."""
    for module in pkgutil.walk_packages(envoy_data_plane.__path__, "envoy_data_plane."):
        importlib.import_module(module.name)


def message(name):
    """The message class of a fully qualified proto name, e.g. envoy.config.route.v3.VirtualHost."""
    package, _, cls = name.rpartition(".")
    return getattr(importlib.import_module(f"envoy_data_plane.{package}"), cls)


# What an EnvoyFilter patch's value is, by its applyTo.
PATCH_TYPES = {
    "LISTENER": "envoy.config.listener.v3.Listener",
    "FILTER_CHAIN": "envoy.config.listener.v3.FilterChain",
    "NETWORK_FILTER": "envoy.config.listener.v3.Filter",
    "LISTENER_FILTER": "envoy.config.listener.v3.ListenerFilter",
    "HTTP_FILTER": "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
    "ROUTE_CONFIGURATION": "envoy.config.route.v3.RouteConfiguration",
    "VIRTUAL_HOST": "envoy.config.route.v3.VirtualHost",
    "HTTP_ROUTE": "envoy.config.route.v3.Route",
    "CLUSTER": "envoy.config.cluster.v3.Cluster",
    "EXTENSION_CONFIG": "envoy.config.core.v3.TypedExtensionConfig",
    "BOOTSTRAP": "envoy.config.bootstrap.v3.Bootstrap",
}


def parse(name, value, where):
    """Parses a YAML value as the named message; returns (message, problems)."""
    try:
        return message(name).from_dict(value), []
    except Exception as e:  # the library raises KeyError, TypeError, ValueError or pydantic's errors
        return None, [f"{where}: not a valid {name}: {type(e).__name__}: {e}"]


def walk(msg):
    """Every message inside msg (itself included), with each Any unpacked into its message."""
    if isinstance(msg, envoy_data_plane.google.protobuf.Any):
        inner = msg.unpack()
        if inner is not None:
            yield from walk(inner)
        return
    yield msg
    for field in dataclasses.fields(msg):
        value = getattr(msg, field.name)
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, betterproto2.Message):
                yield from walk(item)


# The descriptor entry key each rate limit action sends (Envoy's defaults where a key is optional).
ACTION_KEYS = {
    "source_cluster": lambda a: "source_cluster",
    "destination_cluster": lambda a: "destination_cluster",
    "request_headers": lambda a: a.descriptor_key,
    "query_parameters": lambda a: a.descriptor_key,
    "remote_address": lambda a: "remote_address",
    "masked_remote_address": lambda a: "masked_remote_address",
    "generic_key": lambda a: a.descriptor_key or "generic_key",
    "header_value_match": lambda a: a.descriptor_key or "header_match",
    "query_parameter_value_match": lambda a: a.descriptor_key or "query_match",
}


def rate_limit_uses(messages, where):
    """The rate limit filters' domains and the descriptors' key lists found in messages."""
    domains, descriptors, problems = [], [], []
    for top in messages:
        for m in walk(top):
            if isinstance(m, RateLimitFilter):
                domains.append(m)
            elif isinstance(m, RouteRateLimit):
                keys = []
                for action in m.actions:
                    kind, value = betterproto2.which_one_of(action, "action_specifier")
                    if kind not in ACTION_KEYS:
                        problems.append(f"{where}: rate limit action {kind!r}: no descriptor key known for it")
                        continue
                    keys.append(ACTION_KEYS[kind](value))
                descriptors.append(keys)
    return domains, descriptors, problems


def reaches_a_limit(level, keys):
    """Whether the key list walks a domain file's descriptor tree (any value) to a node with a limit."""
    key, rest = keys[0], keys[1:]
    for node in level or []:
        if node.get("key") != key:
            continue
        if not rest and node.get("rate_limit"):
            return True
        if rest and reaches_a_limit(node.get("descriptors"), rest):
            return True
    return False


def check_uses(domains, descriptors, domain_files, where):
    """The filters' domains have files, and every descriptor can meet a limit in its domain's file."""
    problems = []
    if not domains:
        problems.append(f"{where}: no envoy.filters.http.ratelimit filter found")
    trees = {}
    for text in domain_files.values():
        doc = yaml.safe_load(text)
        if isinstance(doc, dict):
            trees[doc.get("domain")] = doc.get("descriptors")
    for f in domains:
        if f.domain not in trees:
            problems.append(f"{where}: the rate limit filter's domain {f.domain!r} has no domain file (have {sorted(trees, key=str)})")
            continue
        for keys in descriptors:
            if keys and not reaches_a_limit(trees[f.domain], keys):
                problems.append(f"{where}: the descriptor {keys} meets no rate_limit in domain {f.domain!r}")
    if not descriptors:
        problems.append(f"{where}: no rate_limits actions found")
    return problems


def check_bootstrap(text, domain_files, where):
    bootstrap, problems = parse("envoy.config.bootstrap.v3.Bootstrap", yaml.safe_load(text), where)
    if bootstrap is None:
        return problems
    domains, descriptors, problems = rate_limit_uses([bootstrap], where)
    clusters = {c.name: c for c in bootstrap.static_resources.clusters}
    for f in domains:
        name = f.rate_limit_service.grpc_service.envoy_grpc.cluster_name
        cluster = clusters.get(name)
        if cluster is None:
            problems.append(f"{where}: the rate limit service's cluster {name!r} is not a static cluster")
            continue
        options = cluster.typed_extension_protocol_options.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        explicit = options.unpack().explicit_http_config if options else None
        if explicit is None or explicit.http2_protocol_options is None:
            problems.append(f"{where}: cluster {name!r} does not speak HTTP/2 (gRPC needs it): set HttpProtocolOptions' explicit_http_config.http2_protocol_options")
    return problems + check_uses(domains, descriptors, domain_files, where)


def check_envoy_filter(text, domain_files, where):
    problems, parsed = [], []
    for d, doc in enumerate(yaml.safe_load_all(text)):
        if not doc:
            continue
        for p, patch in enumerate(doc.get("spec", {}).get("configPatches", [])):
            at = f"{where}: document {d}, configPatches[{p}]"
            name = PATCH_TYPES.get(patch.get("applyTo"))
            if name is None:
                problems.append(f"{at}: applyTo {patch.get('applyTo')!r} is not one this check knows")
                continue
            msg, bad = parse(name, patch.get("patch", {}).get("value", {}), f"{at}.patch.value")
            problems += bad
            if msg is not None:
                parsed.append(msg)
    if problems:
        return problems
    domains, descriptors, problems = rate_limit_uses(parsed, where)
    return problems + check_uses(domains, descriptors, domain_files, where)


@functools.cache
def sluice_check(sluice, config_text, domain_files, where):
    """`sluice check-config` on a configuration whose envoy.paths is replaced by the given files."""
    with tempfile.TemporaryDirectory() as tmp:
        domains = Path(tmp, "domains")
        domains.mkdir()
        for name, content in domain_files:
            Path(domains, name).write_text(content)
        config = yaml.safe_load(config_text)
        config.setdefault("envoy", {})["paths"] = [str(domains)]
        path = Path(tmp, "sluice.yaml")
        path.write_text(yaml.safe_dump(config))
        return check_config(sluice, path, where)


def check_config(sluice, config, where):
    run = subprocess.run([sluice, "check-config", str(config)], capture_output=True, text=True)
    if run.returncode != 0:
        return [f"{where}: sluice check-config {config} exited {run.returncode}: {(run.stderr + run.stdout).strip()}"]
    return []


def domains_of_sluice_config(path):
    """The domain files a Sluice configuration's envoy.paths name (relative to the repository root)."""
    config = yaml.safe_load(Path(path).read_text())
    files = {}
    for p in (config.get("envoy") or {}).get("paths") or []:
        p = Path(p)
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            files[str(f)] = f.read_text()
    return files


def domains_of_chart_values(text):
    domains = (yaml.safe_load(text).get("envoy") or {}).get("domains") or {}
    return {name: c if isinstance(c, str) else yaml.safe_dump(c) for name, c in domains.items()}


def check_sluice_config(sluice, text, domain_files, where):
    """Sluice loads the configuration with its domain files (copied, so that a broken copy is what loads)."""
    if (yaml.safe_load(text).get("envoy") or {}).get("paths") != ["examples/envoy/domains"]:
        return [f"{where}: envoy.paths should be [examples/envoy/domains]"]
    files = tuple((Path(name).name, content) for name, content in domain_files.items())
    return sluice_check(sluice, text, files, where)


def check_chart_domains(sluice, text, where):
    """Sluice loads the values' envoy.domains as files, as the chart's pods do."""
    files = tuple(domains_of_chart_values(text).items())
    if not files:
        return [f"{where}: no envoy.domains"]
    return sluice_check(sluice, yaml.safe_dump({"tiers": []}), files, where)


SCHEMA_PROBLEMS = {}  # EnvoyFilter text -> what envoyfilter_schema.mjs said of it


def run_schema_check(node_modules, texts):
    """Runs envoyfilter_schema.mjs once over many EnvoyFilter texts (TypeScript takes seconds to start)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for i, text in enumerate(texts):
            files[str(Path(tmp, f"envoyfilter-{i}.yaml"))] = text
            Path(tmp, f"envoyfilter-{i}.yaml").write_text(text)
        run = subprocess.run(["node", str(NODE_CHECK), node_modules, *files], capture_output=True, text=True)
        lines = (run.stderr + run.stdout).strip().splitlines()
        if run.returncode != 0 and not any(line.startswith(tuple(f + " [" for f in files)) for line in lines):
            sys.exit(f"{NODE_CHECK.name} failed: {run.stderr}{run.stdout}")
        for path, text in files.items():
            SCHEMA_PROBLEMS[text] = [line.removeprefix(path) for line in lines if line.startswith(path + " [")]


def check_schema(node_modules, text, where):
    if text not in SCHEMA_PROBLEMS:
        run_schema_check(node_modules, [text])
    return [f"{where}{p} (Istio's CRD schema)" for p in SCHEMA_PROBLEMS[text]]


ENVOY = "examples/envoy/envoy.yaml"
ENVOY_SLUICE = "examples/envoy/sluice.yaml"
EDGE = "examples/envoy/domains/edge.yaml"
FILTER = "examples/istio/envoyfilter.yaml"
VALUES = "examples/istio/values.yaml"


def checks(sluice, node_modules, texts):
    """Every check, on the examples' texts (by path): a list of problems, empty when all pass."""
    envoy_domains = domains_of_sluice_config(ENVOY_SLUICE)
    envoy_domains[EDGE] = texts[EDGE]
    istio_domains = domains_of_chart_values(texts[VALUES])
    return (
        check_bootstrap(texts[ENVOY], envoy_domains, ENVOY)
        + check_envoy_filter(texts[FILTER], istio_domains, FILTER)
        + check_schema(node_modules, texts[FILTER], FILTER)
        + check_sluice_config(sluice, texts[ENVOY_SLUICE], envoy_domains, ENVOY_SLUICE)
        + check_chart_domains(sluice, texts[VALUES], VALUES)
    )


# Broken copies each check must refuse: (file, text to replace, its replacement, words the problem holds).
MUTATIONS = [
    # Field names, at the top, inside a typed_config, inside a typed_config inside another, in a map of Any.
    (ENVOY, "static_resources:", "static_resource:", "Unknown field 'static_resource'"),
    (ENVOY, "rate_limited_as_resource_exhausted:", "rate_limited_as_resource_exhaustd:", "Unknown field 'rate_limited_as_resource_exhaustd' in message RateLimit"),
    (ENVOY, "descriptor_key: api_key", "descriptor_keys: api_key", "Unknown field 'descriptor_keys'"),
    (ENVOY, "explicit_http_config:", "explicit_http_configs:", "Unknown field 'explicit_http_configs' in message HttpProtocolOptions"),
    # Types, enum values, durations.
    (ENVOY, "ratelimit.v3.RateLimit\n", "ratelimit.v3.RateLimits\n", "unregistered type"),
    (ENVOY, "DRAFT_VERSION_03", "DRAFT_VERSION_3", "Unknown value DRAFT_VERSION_3"),
    (ENVOY, "timeout: 0.1s", "timeout: 100ms", "Invalid duration string"),
    (ENVOY, "port_value: 8081", "port_value: sluice", "invalid literal for int()"),
    # What the example is for: an HTTP/2 cluster for Sluice, a domain and descriptors that meet limits.
    (ENVOY, "envoy_grpc: {cluster_name: sluice}", "envoy_grpc: {cluster_name: ratelimit}", "is not a static cluster"),
    (ENVOY, "http2_protocol_options: {}", "http_protocol_options: {}", "does not speak HTTP/2"),
    (ENVOY, "domain: edge", "domain: edges", "domain 'edges' has no domain file"),
    (ENVOY, "descriptor_key: method", "descriptor_key: verb", "the descriptor ['remote_address', 'verb'] meets no rate_limit"),
    (EDGE, "- key: remote_address", "- key: remote_addr", "the descriptor ['remote_address'] meets no rate_limit"),
    # The domain file and the Sluice configuration as Sluice loads them.
    (EDGE, "requests_per_unit: 60", "requests_per_unt: 60", 'unknown key "requests_per_unt"'),
    (EDGE, "unit: second", "unit: fortnight", "fortnight"),
    (ENVOY_SLUICE, "headers: draft", "headers: x-ratelimit", "envoy.headers"),
    # The EnvoyFilter's patch values, its schema, its domain file in the chart values.
    (FILTER, "failure_mode_deny: false", "failure_mode_denied: false", "Unknown field 'failure_mode_denied' in message RateLimit"),
    (FILTER, "operation: MERGE\n        value:\n          rate_limits:", "operation: MERGE\n        value:\n          ratelimits:", "Unknown field 'ratelimits' in message VirtualHost"),
    (FILTER, "- remote_address: {}\n            # (remote_address, <client IP>), (method", "- remote_addr: {}\n            # (remote_address, <client IP>), (method", "Unknown field 'remote_addr'"),
    (FILTER, "transport_api_version: V3", "transport_api_version: V4", "Unknown value V4"),
    (FILTER, "domain: ingress", "domain: edge", "domain 'edge' has no domain file"),
    (FILTER, "subFilter:", "subfilter:", "'\"subfilter\"' does not exist"),
    (FILTER, "workloadSelector:", "workloadselector:", "'\"workloadselector\"' does not exist"),
    (FILTER, "applyTo: VIRTUAL_HOST", "applyTo: VIRTUALHOST", "applyTo must be equal to one of the allowed values"),
    (FILTER, "operation: INSERT_BEFORE", "operation: INSERT_AHEAD", "operation must be equal to one of the allowed values"),
    (FILTER, "context: GATEWAY", "context: INGRESS", "context must be equal to one of the allowed values"),
    (VALUES, "requests_per_unit: 1000", "requests_per_unit: lots", "ingress.yaml: descriptors[1].rate_limit.requests_per_unit"),
    (VALUES, "      domain: ingress", "      domain: ''", "ingress.yaml: domain: must not be empty"),
]


def main():
    sluice, node_modules = sys.argv[1], sys.argv[2]
    register_all_types()
    texts = {p: Path(p).read_text() for p in (ENVOY, ENVOY_SLUICE, EDGE, FILTER, VALUES)}

    print(f"== the examples: {', '.join(texts)}")
    # The configuration as a user runs it from the repository root, with the files it names.
    problems = check_config(sluice, ENVOY_SLUICE, ENVOY_SLUICE)
    problems += checks(sluice, node_modules, texts)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)

    print(f"== {len(MUTATIONS)} broken copies, each refused for its fault")
    run_schema_check(node_modules, [texts[FILTER].replace(old, new, 1) for path, old, new, _ in MUTATIONS if path == FILTER])
    missed = 0
    for path, old, new, expected in MUTATIONS:
        if old not in texts[path]:
            print(f"{path}: the text to break is gone: {old!r}", file=sys.stderr)
            missed += 1
            continue
        broken = dict(texts, **{path: texts[path].replace(old, new, 1)})
        found = checks(sluice, node_modules, broken)
        caught = [p for p in found if expected in p]
        if not caught:
            print(f"{path}: {old!r} -> {new!r} was not refused with {expected!r}; problems: {found}", file=sys.stderr)
            missed += 1
        else:
            print(f"refused: {new.strip()!r} in {path}: {caught[0][:200]}")
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
