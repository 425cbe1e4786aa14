// Checks Istio EnvoyFilter manifests against Istio's CRD schema, as published in Istio's
// crd-all.gen.yaml and packaged by @kubernetes-models/istio (see examples/check/package.json).
//   node envoyfilter_schema.mjs NODE_MODULES FILE...
// Two checks, since neither alone does what the API server does:
// - the package's validator, compiled from the CRD's openAPIV3Schema: types, enums (applyTo,
//   context, operation, ...), required fields, patterns;
// - TypeScript's excess-property check against the package's types, generated from the same schema:
//   a field the schema does not name (a typo such as `subfilter`) is an error, as under
//   `kubectl apply --validate=strict`. The schema leaves patch.value open (Envoy's own config);
//   examples/check/envoy_configs.py parses that with Envoy's message types.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, ...files] = process.argv.slice(2);
const require = createRequire(join(modules, "noop.js"));
const YAML = require("yaml");
const ts = require("typescript");
const model = "@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter";
const { EnvoyFilter } = await import(pathToFileURL(join(modules, `${model}.js`)));

const problems = [];
// Beside node_modules, so that the generated files import the package as any module would.
const dir = mkdtempSync(join(dirname(modules), "envoyfilter-"));
const sources = new Map();
for (const file of files) {
  const docs = YAML.parseAllDocuments(readFileSync(file, "utf8"));
  docs.forEach((doc, i) => {
    if (doc.errors.length) {
      problems.push(`${file} [${i}]: ${doc.errors.map((e) => e.message).join("; ")}`);
      return;
    }
    const manifest = doc.toJS();
    if (manifest?.kind !== "EnvoyFilter") {
      problems.push(`${file} [${i}]: kind ${manifest?.kind}, not EnvoyFilter`);
      return;
    }
    try {
      new EnvoyFilter(manifest).validate();
    } catch (e) {
      problems.push(`${file} [${i}]: ${e.message}`);
    }
    const source = join(dir, `doc${sources.size}.mts`);
    sources.set(source, `${file} [${i}]`);
    writeFileSync(
      source,
      `import type { IEnvoyFilter } from "${model}";\n` +
        `export const manifest: IEnvoyFilter = ${JSON.stringify(manifest, null, 2)};\n`,
    );
  });
}

const program = ts.createProgram([...sources.keys()], {
  noEmit: true,
  strict: true,
  module: ts.ModuleKind.Node16,
  moduleResolution: ts.ModuleResolutionKind.Node16,
  types: [],
});
for (const d of ts.getPreEmitDiagnostics(program)) {
  const at = d.file ? `${sources.get(d.file.fileName) ?? d.file.fileName}: ` : "";
  problems.push(at + ts.flattenDiagnosticMessageText(d.messageText, " "));
}
rmSync(dir, { recursive: true, force: true });

for (const p of problems) console.error(p);
process.exit(problems.length ? 1 : 0);
