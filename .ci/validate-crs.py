#!/usr/bin/env python3
"""Validate custom resources against the openAPIV3Schema of their CRD.

kubernetes-validate only checks built-in kinds, so the example
PostgresClusters are checked here the way the API server checks them
structurally: types, required fields, enums, bounds, and (like --strict)
no unknown fields. CEL rules are evaluated by the Rust tests.

usage: validate-crs.py CRD_DIR FILE...
"""
import copy
import glob
import sys

import jsonschema
import yaml


def to_json_schema(node):
    """Translate the Kubernetes OpenAPI dialect into plain JSON Schema."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("x-kubernetes-validations", "x-kubernetes-list-type",
                   "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
                   "x-kubernetes-embedded-resource", "description", "format"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        else:
            out[key] = to_json_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("x-kubernetes-int-or-string", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("x-kubernetes-preserve-unknown-fields", None)
    elif node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    if node.get("nullable"):
        out.pop("nullable", None)
        if "type" in out:
            out["type"] = [out["type"], "null"]
    return out


def load_crds(crd_dir):
    schemas = {}
    for path in sorted(glob.glob(f"{crd_dir}/*.yaml")):
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group = crd["spec"]["group"]
                kind = crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    schema = version["schema"]["openAPIV3Schema"]
                    schemas[(f"{group}/{version['name']}", kind)] = to_json_schema(copy.deepcopy(schema))
    return schemas


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    schemas = load_crds(sys.argv[1])
    if not schemas:
        print(f"no CRDs found in {sys.argv[1]}", file=sys.stderr)
        return 2
    failures = checked = 0
    for path in sys.argv[2:]:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            schema = schemas.get(key)
            if schema is None:
                continue
            # apiVersion, kind and metadata are checked by the API server
            # itself, not by the CRD schema.
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
            schema = dict(schema)
            schema.get("properties", {}).pop("metadata", None)
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path))
            name = doc.get("metadata", {}).get("name", "?")
            checked += 1
            for e in errors:
                failures += 1
                where = ".".join(str(p) for p in e.path) or "(root)"
                print(f"ERROR {path} {key[1]}/{name}: {where}: {e.message}")
            if not errors:
                print(f"OK    {path} {key[1]}/{name}")
    if checked == 0:
        print("no custom resources found to validate", file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
