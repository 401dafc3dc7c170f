"""Monitoring checks of scripts/chart-check.sh: alerts, their tests, the docs.

Usage: chart_check_monitoring.py ROOT_DIR OUT_DIR

- every alert of helm/gleepost-gateway/files/alerts.yaml has, in
  helm/tests/alerts.test.yaml, at least one evaluation where it fires and one
  where it must stay silent, and the tests name no unknown alert;
- docs/operations.md's alerts table lists exactly those alerts, and every
  gleepost_gateway_* metric the alerts and the dashboard use is in its metrics
  table;
- docs/grafana-dashboard.json: every data source reference is the
  ${datasource} template variable (a datasource variable of type prometheus
  whose initial value is the ${DS_PROMETHEUS} import input), so it works both
  imported by hand and provisioned by a sidecar; unique panel ids, no
  overlapping panels, panels for refusals, resyncs, replays and drains;
- the prometheus-adapter rule in docs/operations.md serves the chart's HPA
  metric name per pod.
It writes OUT_DIR/monitoring-exprs.rules.yaml (every dashboard query and the
adapter rule's query, as recording rules, for `promtool check rules`) and
OUT_DIR/adapter.test.yaml (a promtool unit test of the adapter query).
Exits 1 listing every failed check.
"""
import copy
import json
import os
import re
import sys

import yaml

root, out = sys.argv[1], sys.argv[2]
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

# --- the dashboard
dash = json.loads(read("docs", "grafana-dashboard.json"))
DS = {"type": "prometheus", "uid": "${datasource}"}
variables = dash["templating"]["list"]
dsvar = variables[0] if variables else {}
if dsvar.get("name") != "datasource" or dsvar.get("type") != "datasource" or dsvar.get("query") != "prometheus":
    fail(f"dashboard: the first template variable must be datasource (type datasource, query prometheus): {dsvar}")
if dsvar.get("current", {}).get("value") != "${DS_PROMETHEUS}":
    fail("dashboard: the datasource variable must start on ${DS_PROMETHEUS} (the import input)")
if not any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus" for i in dash.get("__inputs", [])):
    fail("dashboard: __inputs must declare DS_PROMETHEUS (Prometheus), for manual import")
rest = copy.deepcopy(dash)
del rest["__inputs"]
rest["templating"]["list"][0].pop("current", None)
if "DS_PROMETHEUS" in json.dumps(rest):
    fail("dashboard: ${DS_PROMETHEUS} used outside __inputs and the datasource variable "
         "(a sidecar-provisioned dashboard cannot resolve it)")
refs = []


def walk(o, where):
    if isinstance(o, dict):
        if "datasource" in o and where != "dsvar":
            refs.append((where, o["datasource"]))
        for k, v in o.items():
            walk(v, where)
    elif isinstance(o, list):
        for v in o:
            walk(v, where)


for v in variables[1:]:
    walk(v, f"variable {v['name']}")
exprs = []
cells = {}
ids = set()
for panel in dash["panels"]:
    title = panel["title"]
    if panel["id"] in ids:
        fail(f"dashboard: duplicate panel id {panel['id']}")
    ids.add(panel["id"])
    g = panel["gridPos"]
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            if (x, y) in cells:
                fail(f"dashboard: panels {cells[(x, y)]!r} and {title!r} overlap")
            cells[(x, y)] = title
    if panel["type"] == "row":
        continue
    walk(panel, f"panel {title!r}")
    for t in panel.get("targets", []):
        exprs.append((title, t["expr"]))
bad = [(w, d) for w, d in refs if d != DS]
if bad:
    fail(f"dashboard: data sources other than ${{datasource}}: {bad[:3]}")
if not exprs:
    fail("dashboard: no queries")
for v in variables[1:]:
    if "label_values(" in json.dumps(v.get("query")):
        exprs.append((f"variable {v['name']}", re.search(r"label_values\((.*), *\w+\)", v["definition"]).group(1)))
dash_metrics = set()
for _, e in exprs:
    dash_metrics |= metrics_in(e)
for need in ("gleepost_gateway_connections_refused_total", "gleepost_gateway_resyncs_total",
             "gleepost_gateway_events_replayed_total", "gleepost_gateway_draining",
             "gleepost_gateway_max_connections"):
    if need not in dash_metrics:
        fail(f"dashboard: no panel queries {need}")
ok(f"dashboard: {len(dash['panels'])} panels, {len(exprs)} queries, every data source is ${{datasource}}")
used |= dash_metrics
missing = sorted(m for m in used if not documented_metric(m))
if missing:
    fail(f"metrics used by alerts or the dashboard but not in docs/operations.md's metrics table: {missing}")
else:
    ok(f"the {len(used)} metrics the alerts and the dashboard use are documented")

# --- the prometheus-adapter rule (docs/operations.md) for the HPA connections metric
values = yaml.safe_load(read("helm", "gleepost-gateway", "values.yaml"))
metric = values["autoscaling"]["connections"]["metricName"]
blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", ops, re.S) if "seriesQuery" in b]
if len(blocks) != 1:
    fail(f"docs/operations.md: want exactly one prometheus-adapter rule block, found {len(blocks)}")
    adapter_query = None
else:
    rule = blocks[0]["rules"]["custom"][0]
    if rule["name"].get("as") != metric:
        fail(f"adapter rule serves {rule['name'].get('as')!r}, the chart's HPA asks for {metric!r}")
    if rule["resources"]["overrides"] != {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}:
        fail(f"adapter rule must map the namespace and pod labels: {rule['resources']}")
    if metric not in metrics_in(rule["seriesQuery"]):
        fail(f"adapter seriesQuery {rule['seriesQuery']!r} does not select {metric}")
    # What prometheus-adapter sends for GET .../namespaces/rt/pods/*/<metric>.
    adapter_query = (rule["metricsQuery"].replace("<<.Series>>", metric)
                     .replace("<<.LabelMatchers>>", 'namespace="rt",pod=~"gw-a|gw-b"')
                     .replace("<<.GroupBy>>", "pod"))
    if "<<" in adapter_query:
        fail(f"adapter metricsQuery has unexpanded templates: {adapter_query}")
    ok(f"adapter rule serves {metric} per pod")

# --- files for promtool: every query must parse; the adapter query must answer per pod
with open(os.path.join(out, "monitoring-exprs.rules.yaml"), "w") as f:
    rec = []
    for i, (title, e) in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$pod", ".*")
        rec.append({"record": f"dashboard:query_{i}", "expr": e, "labels": {"panel": title}})
    if adapter_query:
        rec.append({"record": "adapter:connections_per_pod", "expr": adapter_query})
    yaml.safe_dump({"groups": [{"name": "dashboard-and-adapter", "rules": rec}]}, f, sort_keys=False)
with open(os.path.join(out, "adapter.test.yaml"), "w") as f:
    series = [
        {"series": f'{metric}{{job="gleepost-gateway",namespace="rt",pod="gw-a",instance="a"}}', "values": "100x5"},
        {"series": f'{metric}{{job="gleepost-gateway",namespace="rt",pod="gw-b",instance="b"}}', "values": "250x5"},
        {"series": f'{metric}{{job="gleepost-gateway",namespace="other",pod="gw-a",instance="c"}}', "values": "999x5"},
    ]
    yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": adapter_query or "vector(0)", "eval_time": "4m", "exp_samples": [
            {"labels": '{pod="gw-a"}', "value": 100}, {"labels": '{pod="gw-b"}', "value": 250}]}]}]}, f, sort_keys=False)

if failures:
    print(f"\n{len(failures)} check(s) failed")
    sys.exit(1)
