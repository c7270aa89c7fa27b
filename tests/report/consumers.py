"""muster's reports read by real consumers: the JUnit XML by junitparser
(from PyPI, as CI plugins read test results) and the JSON by jsonschema
against docs/report.schema.json (JSON Schema 2020-12, formats and patterns
checked). Prints what junitparser read, as JSON, for tests/report.rs.

usage: consumers.py JUNIT_FILE JSON_FILE SCHEMA_FILE
"""

import json
import sys

import jsonschema
from junitparser import JUnitXml


def read_junit(path):
    xml = JUnitXml.fromfile(path)
    cases = []
    for suite in xml:
        for case in suite:
            cases.append(
                {
                    "suite": suite.name,
                    "classname": case.classname,
                    "name": case.name,
                    "time": case.time,
                    "results": [type(r).__name__ for r in case.result],
                    "messages": [r.message for r in case.result],
                    "texts": [r.text for r in case.result],
                }
            )
    return {
        "tests": xml.tests,
        "failures": xml.failures,
        "errors": xml.errors,
        "skipped": xml.skipped,
        "cases": cases,
    }


def check_json(path, schema_path):
    with open(schema_path) as f:
        schema = json.load(f)
    with open(path) as f:
        report = json.load(f)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.path))
    if errors:
        for error in errors:
            print(f"{list(error.path)}: {error.message}", file=sys.stderr)
        sys.exit(1)


def main():
    junit, report, schema = sys.argv[1:4]
    check_json(report, schema)
    print(json.dumps(read_junit(junit)))


if __name__ == "__main__":
    main()
