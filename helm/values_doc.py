"""The chart's values.schema.json and README.md, both made from values.yaml and its `# --` comments.

    python helm/values_doc.py write   # writes helm/sluice/values.schema.json and helm/sluice/README.md
    python helm/values_doc.py check   # fails when either differs from what values.yaml makes (CI)

The schema closes every mapping of fixed keys (a typo in a value fails `helm install`) and leaves
open the free-form ones: Kubernetes objects passed through as they are, maps of names, and `config`,
which Sluice itself validates. Needs PyYAML.
"""

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "sluice"

# Passed through to Kubernetes or to Sluice as they are: any keys.
FREE_FORM = {
    "config", "resources", "podSecurityContext", "securityContext", "probes.liveness",
    "probes.readiness", "probes.startup", "updateStrategy", "nodeSelector", "affinity",
}
# Values that take more than one type: "" means "derive it".
TYPES = {
    "terminationGracePeriodSeconds": ["string", "integer"],
    "podDisruptionBudget.enabled": ["string", "boolean"],
    "podDisruptionBudget.minAvailable": ["integer", "string"],
    "podDisruptionBudget.maxUnavailable": ["string", "integer"],
    "autoscaling.targetCPUUtilizationPercentage": ["integer"],
}


def docs(text):
    """Key path -> its `# --` comment, joined into one line."""
    found, stack, pending = {}, [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending is not None:
            pending.append(stripped[1:].strip())
            continue
        key = re.match(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):", line)
        if key:
            indent = len(key.group(1))
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, key.group(2))]
            if pending is not None:
                found[".".join(k for _, k in stack)] = " ".join(p for p in pending if p)
        if stripped:
            pending = None
    return found


def json_type(value):
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}[type(value)]


def schema_of(value, path):
    if path in TYPES:
        return {"type": TYPES[path]}
    if isinstance(value, dict) and value and path not in FREE_FORM and not path.endswith("domains"):
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: schema_of(v, f"{path}.{k}" if path else k) for k, v in value.items()},
        }
    return {"type": json_type(value)}


def schema(values):
    top = schema_of(values, "")
    top["$schema"] = "http://json-schema.org/draft-07/schema#"
    top["title"] = "Values of the Sluice chart (made by helm/values_doc.py from values.yaml)"
    return json.dumps(top, indent=2, sort_keys=True) + "\n"


def readme(values, described):
    def default(path):
        value = values
        for part in path.split("."):
            value = value[part]
        text = json.dumps(value)
        return "see values.yaml" if len(text) > 60 else f"`{text}`"

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    rows = [f"| `{path}` | {default(path)} | {text.replace('|', '/')} |" for path, text in described.items()]
    return "\n".join([
        f"# The Sluice chart ({chart['version']})",
        "",
        chart["description"] + ".",
        "",
        "```sh",
        "helm install sluice helm/sluice -f my-values.yaml",
        "```",
        "",
        "Operations (rollouts, alerts, domain files, reloads) are in",
        "[docs/operations.md](../../docs/operations.md). `values.schema.json` refuses unknown keys and",
        "values of the wrong type. This page and the schema are made from `values.yaml` by",
        "`python helm/values_doc.py write`; CI checks both are current.",
        "",
        "## Values",
        "",
        "| key | default | description |",
        "|---|---|---|",
        *rows,
        "",
    ])


def main():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    made = {CHART / "values.schema.json": schema(values), CHART / "README.md": readme(values, docs(text))}
    if sys.argv[1:] == ["write"]:
        for path, content in made.items():
            path.write_text(content)
    elif sys.argv[1:] == ["check"]:
        stale = [p.name for p, content in made.items() if not p.exists() or p.read_text() != content]
        if stale:
            sys.exit(f"{', '.join(stale)} differ from what values.yaml makes: run python helm/values_doc.py write")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
