"""Monitoring checks of scripts/chart-check.sh: alerts, their tests, the docs.

Usage: chart_check_monitoring.py ROOT_DIR

- every alert of helm/gleepost-gateway/files/alerts.yaml has, in
  helm/tests/alerts.test.yaml, at least one evaluation where it fires and one
  where it must stay silent, and the tests name no unknown alert;
- docs/operations.md's alerts table lists exactly those alerts, and every
  gleepost_gateway_* metric the alerts use is in its metrics table.
Exits 1 listing every failed check.
"""
import os
import re
import sys

import yaml

root = sys.argv[1]
failures = []


def fail(msg):
    failures.append(msg)
    print("  FAIL " + msg)


def ok(msg):
    print("  ok   " + msg)


def read(*parts):
    with open(os.path.join(root, *parts)) as f:
        return f.read()


alerts = yaml.safe_load(read("helm", "gleepost-gateway", "files", "alerts.yaml"))
rules = [r for g in alerts["groups"] for r in g["rules"]]
names = sorted(r["alert"] for r in rules)

# --- every alert: a firing and a silent unit test
tests = yaml.safe_load(read("helm", "tests", "alerts.test.yaml"))
firing, silent = set(), set()
for t in tests["tests"]:
    for case in t.get("alert_rule_test", []):
        (firing if case.get("exp_alerts") else silent).add(case["alertname"])
for name in names:
    if name not in firing:
        fail(f"alert {name} has no unit test in which it fires")
    if name not in silent:
        fail(f"alert {name} has no unit test in which it must stay silent")
unknown = (firing | silent) - set(names)
if unknown:
    fail(f"helm/tests/alerts.test.yaml tests unknown alerts {sorted(unknown)}")
ok(f"{len(names)} alerts, each tested firing and silent")

# --- docs/operations.md lists the alerts and the metrics they use
ops = read("docs", "operations.md")
documented_alerts = sorted(set(re.findall(r"^\| `(Gateway\w+)` \|", ops, re.M)))
if documented_alerts != names:
    fail(f"docs/operations.md alerts table {documented_alerts} != files/alerts.yaml {names}")
else:
    ok("docs/operations.md alerts table matches files/alerts.yaml")

metric_rows = re.findall(r"^\| `([a-z_*]+)(?:\{[^}]*\})?` \|", ops, re.M)
documented = {"gleepost_gateway_" + m for m in metric_rows}


def documented_metric(name):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in documented or base in documented or \
        any(d.endswith("*") and name.startswith(d[:-1]) for d in documented)


def metrics_in(expr):
    return set(re.findall(r"\bgleepost_gateway_[a-z_]+", expr))


used = set()
for r in rules:
    used |= metrics_in(r["expr"])
missing = sorted(m for m in used if not documented_metric(m))
if missing:
    fail(f"metrics used by alerts but not in docs/operations.md's metrics table: {missing}")
else:
    ok(f"the {len(used)} metrics the alerts use are documented")

if failures:
    print(f"\n{len(failures)} check(s) failed")
    sys.exit(1)
