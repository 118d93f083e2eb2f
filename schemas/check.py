#!/usr/bin/env python3
"""Check dtrust-worker's wire schemas (run from anywhere: python3 schemas/check.py).

(a) every *.schema.json is a valid JSON Schema 2020-12 document with $schema, $id
    (https://schemas.dtrust-worker.example/<file>), title and description;
(b) every examples/<schema>.<what>.json is VALID against <schema>.schema.json and every
    examples/invalid/<schema>.<what>.json is INVALID (issue-job and revoke-job examples
    also against job.schema.json, with the same verdict); relative $refs are resolved
    through a `referencing` registry holding every schema by its $id, never fetched;
    oversized values (10 MB strings) built here must be invalid too;
(c) dtrust-rest.openapi.yaml is a valid OpenAPI 3.1 document, and examples/rest/<Name>.*.json
    is valid (examples/rest/invalid/: invalid) against its components.schemas.<Name>.

`pattern` is evaluated with ECMA-262 semantics (the `regress` package) when available, as
JSON Schema requires; Python's `re` differs (its `$` also matches before a final newline).
Formats are asserted (`date-time` needs rfc3339-validator). Needs: jsonschema, referencing,
openapi-spec-validator, pyyaml, regress, rfc3339-validator.
Exit status 0 when everything holds; the last line is 'N passed, N failed'.
"""
import copy
import functools
import json
import pathlib
import sys
import time

import jsonschema
import referencing
import referencing.jsonschema
import yaml
from jsonschema import Draft202012Validator, FormatChecker, validators

try:
    import regress
except ImportError:  # pragma: no cover
    regress = None

HERE = pathlib.Path(__file__).resolve().parent
BASE = "https://schemas.dtrust-worker.example/"
OPENAPI_ID = "urn:dtrust-worker:dtrust-rest.openapi.yaml"
MESSAGE_SCHEMAS = [
    "issue-job", "revoke-job", "job", "result",
    "keyarchive-generate", "keyarchive-generated", "keyarchive-import", "keyarchive-imported",
]

passed = 0
failed = 0


def ok(what):
    global passed
    passed += 1
    print(f"ok    {what}")


def fail(what):
    global failed
    failed += 1
    print(f"FAIL  {what}")


@functools.lru_cache(maxsize=None)
def ecma(pattern):
    return regress.Regex(pattern)


def ecma_pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not ecma(pattern).find(instance):
        yield jsonschema.ValidationError(f"{instance!r:.80} does not match {pattern!r}")


Validator = Draft202012Validator
if regress is not None:
    Validator = validators.extend(Draft202012Validator, {"pattern": ecma_pattern})
    # A $ref into a document that declares "$schema" makes jsonschema re-pick the validator
    # class from that URI: register ours for 2020-12, or the ECMA pattern is lost there.
    validators.validates("https://json-schema.org/draft/2020-12/schema")(Validator)


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def first_error(validator, instance):
    errs = sorted(validator.iter_errors(instance), key=lambda e: (len(e.path), list(e.path).__repr__()))
    if not errs:
        return None
    best = jsonschema.exceptions.best_match(errs)
    loc = "/" + "/".join(str(p) for p in best.absolute_path)
    return f"{loc}: {best.message[:160]}"


def main():
    if regress is None:
        print("warning: regress not installed; 'pattern' uses Python re, not ECMA-262")

    # ---- (a) the schemas themselves
    schemas = {}
    for path in sorted(HERE.glob("*.schema.json")):
        schema = load_json(path)
        name = path.name
        schemas[name] = schema
        problems = []
        try:
            Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            problems.append(f"not valid against the 2020-12 metaschema: {e.message}")
        if schema.get("$schema") != "https://json-schema.org/draft/2020-12/schema":
            problems.append("$schema is not 2020-12")
        if schema.get("$id") != BASE + name:
            problems.append(f"$id is not {BASE + name}")
        for key in ("title", "description"):
            if not schema.get(key):
                problems.append(f"no {key}")
        fail(f"schema {name}: " + "; ".join(problems)) if problems else ok(f"schema {name}")
    for stem in MESSAGE_SCHEMAS + ["defs"]:
        if f"{stem}.schema.json" not in schemas:
            fail(f"schema {stem}.schema.json is missing")

    registry = referencing.Registry().with_resources(
        (s["$id"], referencing.Resource.from_contents(s, default_specification=referencing.jsonschema.DRAFT202012))
        for s in schemas.values()
    )
    # Unresolvable refs must fail loudly instead of being fetched from the network.
    registry = registry.crawl()
    fc = FormatChecker()

    def validator_for(stem):
        return Validator(schemas[f"{stem}.schema.json"], registry=registry, format_checker=fc)

    vals = {stem: validator_for(stem) for stem in MESSAGE_SCHEMAS if f"{stem}.schema.json" in schemas}

    # ---- (b) examples
    ex_dir = HERE / "examples"
    seen_valid = set()
    for expect_valid, folder in ((True, ex_dir), (False, ex_dir / "invalid")):
        for path in sorted(folder.glob("*.json")):
            stem = path.name.split(".", 1)[0]
            if stem not in vals:
                fail(f"{path.relative_to(HERE)}: no schema named {stem}.schema.json")
                continue
            instance = load_json(path)
            targets = [stem] + (["job"] if stem in ("issue-job", "revoke-job") else [])
            for target in targets:
                err = first_error(vals[target], instance)
                label = f"{path.relative_to(HERE)} vs {target}"
                if expect_valid and err is None:
                    ok(f"{label}: valid")
                    seen_valid.add(stem)
                elif not expect_valid and err is not None:
                    ok(f"{label}: invalid as expected ({err})")
                elif expect_valid:
                    fail(f"{label}: expected valid, got {err}")
                else:
                    fail(f"{label}: expected INVALID, but it validates")
    for stem in MESSAGE_SCHEMAS:
        if stem not in seen_valid:
            fail(f"no valid example for {stem}")

    # ---- (b') untrusted-input bounds: a 10 MB string must fail wherever it goes
    huge = "A" * (10 * 1024 * 1024)
    issue = load_json(ex_dir / "issue-job.pkcs10.json")
    revoke = load_json(ex_dir / "revoke-job.by-order-id-with-cn.json")
    generated = load_json(ex_dir / "keyarchive-generated.csr.json")
    imported = load_json(ex_dir / "keyarchive-imported.cm-error.json")
    result = load_json(ex_dir / "result.issue-pkcs10-succeeded.json")
    pem_huge = "-----BEGIN CERTIFICATE REQUEST-----\n" + huge + "\n-----END CERTIFICATE REQUEST-----\n"
    cases = [
        ("issue-job", issue, ["csr_pem"], pem_huge),
        ("issue-job", issue, ["job_id"], huge),
        ("issue-job", issue, ["product"], huge),
        ("issue-job", issue, ["revocation_password"], huge),
        ("issue-job", issue, ["subject", "cn"], huge),
        ("issue-job", issue, ["subject", "ou"], ["IT"] * 100_000),
        ("issue-job", issue, ["san", "dns"], ["a.example.com"] * 100_000),
        ("issue-job", issue, ["metadata", "note"], huge),
        ("issue-job", issue, ["metadata", "deep"], {"a": [{"b": huge}]}),
        ("issue-job", issue, ["metadata", "list"], list(range(100_000))),
        ("revoke-job", revoke, ["cn"], huge),
        ("revoke-job", revoke, ["order_id"], huge),
        ("job", issue, ["csr_pem"], pem_huge),
        ("keyarchive-generated", generated, ["csr_pem"], pem_huge),
        ("keyarchive-imported", imported, ["error", "message"], huge),
        ("result", result, ["certificate_pem"], huge),
        ("result", result, ["warnings"], [huge]),
    ]
    for stem, base, path, value in cases:
        inst = copy.deepcopy(base)
        node = inst
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        t0 = time.monotonic()
        valid = vals[stem].is_valid(inst)
        dt = time.monotonic() - t0
        size = len(value) if isinstance(value, (str, list)) else "nested"
        label = f"oversize {stem} /{'/'.join(path)} (len {size}) rejected in {dt:.2f}s"
        fail(label.replace("rejected", "ACCEPTED")) if valid else ok(label)

    # ---- (c) OpenAPI
    oa_path = HERE / "dtrust-rest.openapi.yaml"
    with open(oa_path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    try:
        from openapi_spec_validator import OpenAPIV31SpecValidator, validate

        validate(spec, cls=OpenAPIV31SpecValidator)
        ok("dtrust-rest.openapi.yaml: valid OpenAPI 3.1")
    except Exception as e:  # noqa: BLE001 - report any validator error as a failure
        fail(f"dtrust-rest.openapi.yaml: {type(e).__name__}: {str(e)[:300]}")
    if spec.get("openapi", "").startswith("3.1"):
        ok("dtrust-rest.openapi.yaml: openapi 3.1.x")
    else:
        fail("dtrust-rest.openapi.yaml: not openapi 3.1.x")
    schemes = spec.get("components", {}).get("securitySchemes", {})
    if any(s.get("type") == "mutualTLS" for s in schemes.values()):
        ok("dtrust-rest.openapi.yaml: mutualTLS security scheme")
    else:
        fail("dtrust-rest.openapi.yaml: no mutualTLS security scheme")

    oa_registry = registry.with_resource(
        OPENAPI_ID, referencing.Resource.from_contents(spec, default_specification=referencing.jsonschema.DRAFT202012)
    )
    comp = spec.get("components", {}).get("schemas", {})
    rest_dir = ex_dir / "rest"
    for expect_valid, folder in ((True, rest_dir), (False, rest_dir / "invalid")):
        for path in sorted(folder.glob("*.json")):
            name = path.name.split(".", 1)[0]
            if name not in comp:
                fail(f"{path.relative_to(HERE)}: no components.schemas.{name}")
                continue
            v = Validator({"$ref": f"{OPENAPI_ID}#/components/schemas/{name}"}, registry=oa_registry, format_checker=fc)
            err = first_error(v, load_json(path))
            label = f"{path.relative_to(HERE)} vs {name}"
            if expect_valid == (err is None):
                ok(f"{label}: " + ("valid" if expect_valid else f"invalid as expected ({err})"))
            else:
                fail(f"{label}: expected {'valid' if expect_valid else 'INVALID'}, got {err or 'valid'}")

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
