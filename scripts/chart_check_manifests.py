"""Checks of the manifests rendered by scripts/chart-check.sh (helm template output).

Usage: chart_check_manifests.py OUT_DIR CHART_DIR "K8S_VERSIONS"

Every render in RENDERS is validated against the Kubernetes JSON schemas of each
version (kubernetes-validate, strict; CRD kinds are skipped there by name) and
then checked for what the chart promises: drain-safe grace periods, broker
wiring that cannot split events across pods, stable pod template labels,
probes, ports, hardening, PDB/HPA/ServiceMonitor/PrometheusRule wiring.
Exits 1 listing every failed check.
"""
import base64
import functools
import os
import re
import sys

import yaml
import kubernetes_validate.utils as kvu

out, chart, versions = sys.argv[1], sys.argv[2], sys.argv[3].split()
# The library re-reads the big _definitions.json on every call: cache it.
kvu.schema_contents = functools.lru_cache(maxsize=None)(kvu.schema_contents)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # not in the Kubernetes schemas
# Exit waits of the binary after the drain window (crates/gateway/src/server.rs):
# CLOSE_WAIT 5 s for close handshakes, then up to 2 s for the admin server.
EXIT_WAITS = 7
DEFAULT_MARGIN = 10
SELECTOR = {"app.kubernetes.io/name": "gleepost-gateway", "app.kubernetes.io/instance": "gw"}
failures = []

REDIS_VARS = ("REDIS_URL", "REDIS_CLUSTER_URLS", "REDIS_SENTINEL_URLS")
# Secret key the chart's own Secret uses for each Redis variable.
CHART_REDIS_KEYS = {"REDIS_URL": "redis-url", "REDIS_CLUSTER_URLS": "redis-cluster-urls",
                    "REDIS_SENTINEL_URLS": "redis-sentinel-urls"}
SENTINEL_CONFIG = ("REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_NODE_USERNAME", "REDIS_SENTINEL_NODE_DB")
# render name -> (expected kinds, expected Redis (variable, secret key) or None for the
# embedded broker, extra pod labels, expected GATEWAY_PUBLISH_REPLICAS)
RENDERS = {
    "default": (["ConfigMap", "Deployment", "Secret", "Service", "Service", "ServiceAccount"], None, {}, "0"),
    "all-on": (["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                "PodDisruptionBudget", "PrometheusRule", "Secret", "Service", "Service",
                "ServiceAccount", "ServiceMonitor"], ("REDIS_URL", "redis-url"), {"team": "realtime"}, "1"),
    "existing-secret": (["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "Service",
                         "ServiceAccount"], ("REDIS_URL", "redis-url"), {}, "0"),
    "existing-secret-key": (["ConfigMap", "Deployment", "Service", "Service", "ServiceAccount"],
                            ("REDIS_URL", "url"), {}, "0"),
    "existing-secret-embedded": (["ConfigMap", "Deployment", "Service", "Service", "ServiceAccount"],
                                 None, {}, "0"),
    "cluster": (["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                 "PodDisruptionBudget", "Secret", "Service", "Service", "ServiceAccount"],
                ("REDIS_CLUSTER_URLS", "redis-cluster-urls"), {}, "1"),
    "existing-secret-cluster": (["ConfigMap", "Deployment", "Service", "Service", "ServiceAccount"],
                                ("REDIS_CLUSTER_URLS", "cluster-seeds"), {}, "0"),
    "sentinel": (["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                  "PodDisruptionBudget", "Secret", "Service", "Service", "ServiceAccount"],
                 ("REDIS_SENTINEL_URLS", "redis-sentinel-urls"), {}, "1"),
    "existing-secret-sentinel": (["ConfigMap", "Deployment", "Service", "Service", "ServiceAccount"],
                                 ("REDIS_SENTINEL_URLS", "sentinels"), {}, "0"),
}
# Sentinel renders -> (ConfigMap REDIS_SENTINEL_* expected, Secret key of
# REDIS_SENTINEL_NODE_PASSWORD or None). Every other render has none of them.
SENTINEL = {
    "sentinel": ({"REDIS_SENTINEL_MASTER": "mymaster", "REDIS_SENTINEL_NODE_USERNAME": "gateway",
                  "REDIS_SENTINEL_NODE_DB": "2"}, "redis-sentinel-node-password"),
    "existing-secret-sentinel": ({"REDIS_SENTINEL_MASTER": "mymaster"}, "node-password"),
}
# Redis egress ports of each render with a NetworkPolicy: the sentinels' 26379 only with Sentinel.
REDIS_EGRESS_PORTS = {"all-on": [6379], "cluster": [6379], "sentinel": [6379, 26379]}


def fail(msg):
    failures.append(msg)
    print("  FAIL " + msg)


def ok(msg):
    print("  ok   " + msg)


def seconds(d):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", d)
    if not m:
        raise ValueError(f"bad duration {d!r}")
    n, u = int(m.group(1)), m.group(2)
    return {"ms": -(-n // 1000), "s": n, "m": n * 60, "h": n * 3600}[u]


def load(name):
    with open(os.path.join(out, name + ".yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def only(by_kind, kind):
    return by_kind[kind][0]


with open(os.path.join(chart, "files", "alerts.yaml")) as f:
    alerts = yaml.safe_load(f)

for render in sorted(RENDERS):
    want_kinds, redis, extra_pod_labels, publish_replicas = RENDERS[render]
    docs = load(render)
    print(f"[{render}] {len(docs)} objects")
    kinds = sorted(d["kind"] for d in docs)
    if kinds != sorted(want_kinds):
        fail(f"[{render}] kinds {kinds} != {sorted(want_kinds)}")
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        name = f'{d["kind"]}/{d["metadata"]["name"]}'
        if len(d["metadata"]["name"]) > 63:
            fail(f"[{render}] {name}: name longer than 63 characters")
        if d["kind"] in CRD_KINDS:
            print(f"  skip schema {name}: CRD kind {d['kind']} is not in the Kubernetes schemas (checked below)")
            continue
        for v in versions:
            try:
                kvu.validate(d, v, strict=True)
            except kvu.ValidationError as e:
                fail(f"[{render}] {name} invalid for k8s {v}: {e.message} at {'/'.join(map(str, e.path))}")
            except kvu.SchemaNotFoundError as e:
                fail(f"[{render}] {name}: {e.message}")
        ok(f"{name} (k8s {', '.join(versions)})")

    dep = only(by_kind, "Deployment")
    cm = only(by_kind, "ConfigMap")["data"]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    c = spec["containers"][0]
    if c["name"] != "gleepost-gateway":
        fail(f"[{render}] container name {c['name']!r} (alerts select kube-state-metrics series by container=\"gleepost-gateway\")")

    # --- grace period covers preStop + pre-drain + drain + exit waits + margin
    hook = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    pre, drain = seconds(cm["GATEWAY_PRE_DRAIN_DELAY"]), seconds(cm["GATEWAY_DRAIN_WINDOW"])
    need = hook + pre + drain + EXIT_WAITS + DEFAULT_MARGIN
    grace = spec.get("terminationGracePeriodSeconds")
    if grace != need:
        fail(f"[{render}] terminationGracePeriodSeconds={grace} != preStop {hook} + preDrainDelay {pre} "
             f"+ drainWindow {drain} + exit waits {EXIT_WAITS} + margin {DEFAULT_MARGIN} = {need}")
    else:
        ok(f"terminationGracePeriodSeconds={grace} = preStop {hook} + pre-drain {pre} + drain {drain} "
           f"+ exit waits {EXIT_WAITS} + margin {DEFAULT_MARGIN}")
    if render == "all-on":
        if c.get("lifecycle") != {"preStop": {"sleep": {"seconds": 15}}}:
            fail(f"[all-on] lifecycle {c.get('lifecycle')} (want the preStop sleep from ci/all-on-values.yaml)")
    elif "lifecycle" in c:
        fail(f"[{render}] unexpected lifecycle hook {c['lifecycle']} (default: none)")

    # --- pod template labels: selector labels (+ podLabels) only
    labels = pod["metadata"].get("labels", {})
    want_labels = {**SELECTOR, **extra_pod_labels}
    if labels != want_labels:
        fail(f"[{render}] pod template labels {labels} != {want_labels} (selector labels + podLabels only)")
    if dep["spec"]["selector"]["matchLabels"] != SELECTOR:
        fail(f"[{render}] Deployment selector {dep['spec']['selector']['matchLabels']} != {SELECTOR}")
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for o in by_kind.get(kind, []):
            sel = o["spec"].get("selector") or o["spec"].get("podSelector")
            sel = sel.get("matchLabels", sel)
            if sel != SELECTOR:
                fail(f"[{render}] {kind}/{o['metadata']['name']} selector {sel} != {SELECTOR}")
    if "checksum/config" not in pod["metadata"].get("annotations", {}):
        fail(f"[{render}] pod annotation checksum/config missing")
    ok(f"pod template labels {sorted(labels)} match every selector")

    # --- ports, probes, hardening
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if set(ports) != {"ws", "admin"}:
        fail(f"[{render}] container ports {ports} (want ws and admin)")
    if cm.get("GATEWAY_LISTEN") != f"0.0.0.0:{ports.get('ws')}" or cm.get("GATEWAY_ADMIN_LISTEN") != f"0.0.0.0:{ports.get('admin')}":
        fail(f"[{render}] GATEWAY_LISTEN/GATEWAY_ADMIN_LISTEN do not match the container ports")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        g = c.get(probe, {}).get("httpGet", {})
        if g.get("path") != path or g.get("port") != "admin":
            fail(f"[{render}] {probe} is {g}, want GET {path} on port admin")
    sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
    hardened = [
        (psc.get("runAsNonRoot") is True, "pod runAsNonRoot"),
        (psc.get("runAsUser") == 65532, "pod runAsUser 65532"),
        (psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccomp RuntimeDefault"),
        (sc.get("runAsNonRoot") is True, "container runAsNonRoot"),
        (sc.get("runAsUser") == 65532, "container runAsUser 65532"),
        (sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem"),
        (sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false"),
        (sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL"),
        (sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "container seccomp RuntimeDefault"),
    ]
    for good, what in hardened:
        if not good:
            fail(f"[{render}] security context: {what}")

    # --- credentials and broker wiring
    secret = "gw-creds" if render.startswith("existing-secret") else "gw-gleepost-gateway"
    env = {e["name"]: e for e in c.get("env", [])}
    for var, key in (("GATEWAY_JWT_SECRET", "jwt-secret"), ("GATEWAY_API_KEY", "api-key")):
        ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
        if ref.get("key") != key or ref.get("name") != secret:
            fail(f"[{render}] {var} must come from secret {secret} key {key}, not {ref}")
    strategy = dep["spec"].get("strategy")
    if cm.get("GATEWAY_PUBLISH_REPLICAS") != publish_replicas:
        fail(f"[{render}] GATEWAY_PUBLISH_REPLICAS={cm.get('GATEWAY_PUBLISH_REPLICAS')!r}, want {publish_replicas!r}")
    else:
        ok(f"GATEWAY_PUBLISH_REPLICAS={publish_replicas}")
    if secret != "gw-creds":
        # The chart's own Secret holds the Redis key of the configured mode, and only it.
        data = only(by_kind, "Secret")["data"]
        want_data = {"jwt-secret", "api-key"} | ({CHART_REDIS_KEYS[redis[0]]} if redis else set())
        if render in SENTINEL and SENTINEL[render][1]:
            want_data.add(SENTINEL[render][1])
        if set(data) != want_data:
            fail(f"[{render}] Secret keys {sorted(data)} != {sorted(want_data)}")
        if redis and redis[0] in ("REDIS_CLUSTER_URLS", "REDIS_SENTINEL_URLS"):
            key = CHART_REDIS_KEYS[redis[0]]
            urls = [u.strip() for u in base64.b64decode(data.get(key, "")).decode().split(",")]
            if not urls or not all(re.fullmatch(r"redis://[^,\s]+", u) for u in urls):
                fail(f"[{render}] {key} does not hold comma-separated redis:// URLs: {urls}")
            else:
                ok(f"Secret {key} holds {len(urls)} redis:// URLs")
    set_vars = [v for v in REDIS_VARS if v in env]
    if redis is None:
        if set_vars:
            fail(f"[{render}] {set_vars} set although no Redis is configured")
        if dep["spec"].get("replicas") != 1:
            fail(f"[{render}] the embedded broker must run exactly 1 replica, not {dep['spec'].get('replicas')}")
        if strategy != {"type": "Recreate"}:
            fail(f"[{render}] embedded broker: strategy {strategy}, want Recreate (a surge runs two brokers)")
        else:
            ok("embedded broker: no REDIS_URL, 1 replica, strategy Recreate")
    else:
        var, redis_key = redis
        if set_vars != [var]:
            fail(f"[{render}] Redis variables {set_vars}, want exactly [{var}] (the binary refuses both)")
        ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
        if ref != {"name": secret, "key": redis_key}:
            fail(f"[{render}] {var} secretKeyRef {ref} != required key {redis_key} of {secret} (never optional)")
        else:
            ok(f"{var} from secret {secret} key {redis_key}, required")
        replicas = dep["spec"].get("replicas")
        if replicas is not None and replicas < 2:
            fail(f"[{render}] a Redis render should exercise several pods, not {replicas}")
        if render not in ("all-on", "cluster", "sentinel") and strategy != {"type": "RollingUpdate",
                                               "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}:
            fail(f"[{render}] Redis broker: default strategy {strategy}, want RollingUpdate 25%/0")

    # --- Sentinel: master and data nodes' settings in the ConfigMap, password from the Secret
    want_cm, pw_key = SENTINEL.get(render, ({}, None))
    got_cm = {k: cm[k] for k in SENTINEL_CONFIG if k in cm}
    if got_cm != want_cm:
        fail(f"[{render}] ConfigMap Sentinel settings {got_cm} != {want_cm}")
    pw_ref = env.get("REDIS_SENTINEL_NODE_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef")
    want_pw = {"name": secret, "key": pw_key} if pw_key else None
    if pw_ref != want_pw:
        fail(f"[{render}] REDIS_SENTINEL_NODE_PASSWORD secretKeyRef {pw_ref} != {want_pw} (required when named)")
    elif render in SENTINEL:
        ok(f"Sentinel: ConfigMap {sorted(want_cm)}, REDIS_SENTINEL_NODE_PASSWORD from {secret} key {pw_key}")
    # --- NetworkPolicy: Redis egress ports (the sentinels' port only with Sentinel)
    for np in by_kind.get("NetworkPolicy", []):
        ports = [p["port"] for p in np["spec"]["egress"][0]["ports"]]
        if ports != REDIS_EGRESS_PORTS.get(render):
            fail(f"[{render}] NetworkPolicy Redis egress ports {ports} != {REDIS_EGRESS_PORTS.get(render)}")
        else:
            ok(f"NetworkPolicy Redis egress ports {ports}")

    svcs = by_kind["Service"]
    admin = [s for s in svcs if s["spec"]["ports"][0]["name"] == "admin"]
    public = [s for s in svcs if s["spec"]["ports"][0]["name"] == "ws"]
    if len(admin) != 1 or len(public) != 1 or admin[0]["spec"]["type"] != "ClusterIP":
        fail(f"[{render}] want one public ws Service and one ClusterIP admin Service")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if pdb["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            fail(f"[{render}] PDB unhealthyPodEvictionPolicy {pdb['spec'].get('unhealthyPodEvictionPolicy')}, want AlwaysAllow")
        else:
            ok("PDB unhealthyPodEvictionPolicy AlwaysAllow")
    print(f"  ok   deployment, services and security context checks ({render})")

    if render == "all-on":
        pr = only(by_kind, "PrometheusRule")
        if pr["spec"] != alerts:
            fail("[all-on] PrometheusRule spec differs from files/alerts.yaml")
        else:
            ok("PrometheusRule spec == files/alerts.yaml")
        sm = only(by_kind, "ServiceMonitor")
        ep = sm["spec"]["endpoints"][0]
        sel = sm["spec"]["selector"]["matchLabels"]
        if ep.get("port") != "admin" or ep.get("path") != "/metrics":
            fail(f"[all-on] ServiceMonitor endpoint {ep}")
        if ep.get("relabelings", [None])[0] != {"action": "replace", "targetLabel": "job",
                                                "replacement": "gleepost-gateway"}:
            fail(f"[all-on] ServiceMonitor must first set job=gleepost-gateway (alerts select it): {ep.get('relabelings')}")
        else:
            ok("ServiceMonitor sets job=gleepost-gateway")
        if not all(admin[0]["metadata"]["labels"].get(k) == v for k, v in sel.items()) or \
                any(all(s["metadata"]["labels"].get(k) == v for k, v in sel.items()) for s in public):
            fail("[all-on] ServiceMonitor selector must match the admin Service only")
        else:
            ok("ServiceMonitor scrapes the admin Service's /metrics")
        hpa = only(by_kind, "HorizontalPodAutoscaler")["spec"]["metrics"]
        if {m["type"] for m in hpa} != {"Resource", "Pods"} or \
                not any(m.get("pods", {}).get("metric", {}).get("name") == "gleepost_gateway_connections" for m in hpa):
            fail(f"[all-on] HPA metrics {hpa}")
        if "replicas" in dep["spec"]:
            fail("[all-on] Deployment sets replicas although the HPA owns them")

# --- a chart-only version bump must not change the pod template (no restart).
for render in ("default", "all-on"):
    base = only({d["kind"]: [d] for d in load(render)}, "Deployment")["spec"]["template"]
    bumped_docs = load(f"bump-{render}")
    bumped = only({d["kind"]: [d] for d in bumped_docs}, "Deployment")["spec"]["template"]
    cm_labels = only({d["kind"]: [d] for d in bumped_docs}, "ConfigMap")["metadata"]["labels"]
    if not cm_labels.get("helm.sh/chart", "").endswith("-99.0.0"):
        fail(f"[bump-{render}] the bumped render does not carry chart version 99.0.0: {cm_labels}")
    elif base != bumped:
        fail(f"[bump-{render}] a chart version bump changes the pod template (every pod would restart)")
    else:
        ok(f"[bump-{render}] chart version bump leaves the pod template unchanged")

if failures:
    print(f"\n{len(failures)} check(s) failed")
    sys.exit(1)
