"""Asserts what helm/check.sh's renders of the chart hold, beyond what the Kubernetes schemas check.

  expect.py shape FILE --rolls-on config,envoy-domains --domains NAME --domain-files a.yaml,b.yml
      the pod template's checksum/* annotations are exactly --rolls-on; the domain files come from
      ConfigMap NAME (or none), mounted at /etc/sluice-domains and named in the config's envoy.paths;
      the chart renders a ConfigMap of --domain-files itself (each a YAML map with a `domain`), or none.
  expect.py same-pods A B      the two renders' Deployments are equal (the change leaves the pods be)
  expect.py new-pods A B       the two renders' Deployments differ (the change rolls the pods)
"""

import argparse
import sys

import yaml

DOMAINS_DIR = "/etc/sluice-domains"


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(rendered, kind, name=None):
    found = [d for d in rendered if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        sys.exit(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def shape(args):
    rendered = docs(args.file)
    problems = []
    deployment = one(rendered, "Deployment")
    pod = deployment["spec"]["template"]
    annotations = pod["metadata"].get("annotations") or {}
    checksums = sorted(k.removeprefix("checksum/") for k in annotations if k.startswith("checksum/"))
    want = sorted(filter(None, args.rolls_on.split(",")))
    if checksums != want:
        problems.append(f"checksum annotations {checksums}, expected {want}")

    config_map = one(rendered, "ConfigMap", deployment["metadata"]["name"])
    config = yaml.safe_load(config_map["data"]["sluice.yaml"])
    if "onChange" in config:
        problems.append("sluice.yaml holds the chart's onChange")
    paths = (config.get("envoy") or {}).get("paths") or []

    container = pod["spec"]["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    if args.domains == "none":
        if "envoy-domains" in volumes or "envoy-domains" in mounts or DOMAINS_DIR in paths:
            problems.append("domain files mounted or named, though none were given")
    else:
        source = volumes.get("envoy-domains", {}).get("configMap", {}).get("name")
        if source != args.domains:
            problems.append(f"envoy-domains volume from ConfigMap {source!r}, expected {args.domains!r}")
        mount = mounts.get("envoy-domains", {})
        if mount.get("mountPath") != DOMAINS_DIR or "subPath" in mount or not mount.get("readOnly"):
            problems.append(f"envoy-domains mount {mount}: expected {DOMAINS_DIR}, read-only, no subPath")
        if DOMAINS_DIR not in paths:
            problems.append(f"envoy.paths {paths} does not name {DOMAINS_DIR}")

    made = [d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-envoy-domains")]
    want_files = sorted(filter(None, args.domain_files.split(",")))
    got_files = sorted(made[0]["data"]) if made else []
    if got_files != want_files:
        problems.append(f"rendered domain files {got_files}, expected {want_files}")
    for name in got_files:
        domain = yaml.safe_load(made[0]["data"][name])
        if not isinstance(domain, dict) or not domain.get("domain"):
            problems.append(f"rendered domain file {name} has no `domain`")

    for p in problems:
        print(f"{args.file}: {p}", file=sys.stderr)
    return not problems


def compare(args, want_equal):
    a, b = (one(docs(f), "Deployment") for f in (args.a, args.b))
    if (a == b) != want_equal:
        verdict = "differ" if want_equal else "are equal"
        print(f"{args.a} and {args.b}: the Deployments {verdict}", file=sys.stderr)
        return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("shape")
    s.add_argument("file")
    s.add_argument("--rolls-on", default="")
    s.add_argument("--domains", default="none")
    s.add_argument("--domain-files", default="")
    for name in ("same-pods", "new-pods"):
        c = sub.add_parser(name)
        c.add_argument("a")
        c.add_argument("b")
    args = parser.parse_args()
    if args.command == "shape":
        ok = shape(args)
    else:
        ok = compare(args, want_equal=args.command == "same-pods")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
