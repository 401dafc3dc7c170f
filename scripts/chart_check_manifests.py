"""Checks of the manifests rendered by scripts/chart-check.sh (helm template output).

Usage: chart_check_manifests.py OUT_DIR CHART_DIR "K8S_VERSIONS"
"""
import functools, os, re, sys
import yaml
import kubernetes_validate.utils as kvu

out, chart, versions = sys.argv[1], sys.argv[2], sys.argv[3].split()
# The library re-reads the big _definitions.json on every call: cache it.
kvu.schema_contents = functools.lru_cache(maxsize=None)(kvu.schema_contents)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # not in the Kubernetes schemas
failures = []

def fail(msg):
    failures.append(msg)
    print("  FAIL " + msg)

def seconds(d):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", d)
    if not m:
        raise ValueError(f"bad duration {d!r}")
    n, u = int(m.group(1)), m.group(2)
    return {"ms": -(-n // 1000), "s": n, "m": n * 60, "h": n * 3600}[u]

expected_kinds = {
    "default": ["ConfigMap", "Deployment", "Secret", "Service", "Service", "ServiceAccount"],
    "all-on": ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
               "PodDisruptionBudget", "PrometheusRule", "Secret", "Service", "Service",
               "ServiceAccount", "ServiceMonitor"],
    "existing-secret": ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "Service",
                        "ServiceAccount"],
}
with open(os.path.join(chart, "files", "alerts.yaml")) as f:
    alerts = yaml.safe_load(f)
alert_names = sorted(r["alert"] for g in alerts["groups"] for r in g["rules"])
want_alerts = sorted(["GatewayNotReady", "GatewayBrokerReconnecting", "GatewaySlowConsumers",
                      "GatewayMalformedPayloads", "GatewayHighDeliveryLatency",
                      "GatewayAuthFailureSpike", "GatewayFdsNearLimit", "GatewayProbeSlow"])
if alert_names != want_alerts:
    fail(f"files/alerts.yaml alerts {alert_names} != {want_alerts}")

for render in sorted(expected_kinds):
    with open(os.path.join(out, render + ".yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    print(f"[{render}] {len(docs)} objects")
    kinds = sorted(d["kind"] for d in docs)
    if kinds != sorted(expected_kinds[render]):
        fail(f"[{render}] kinds {kinds} != {sorted(expected_kinds[render])}")
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
        print(f"  ok   {name} (k8s {', '.join(versions)})")

    # --- Deployment checks
    dep = by_kind["Deployment"][0]
    cm = by_kind["ConfigMap"][0]["data"]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    c = spec["containers"][0]
    pre, drain = seconds(cm["GATEWAY_PRE_DRAIN_DELAY"]), seconds(cm["GATEWAY_DRAIN_WINDOW"])
    grace = spec.get("terminationGracePeriodSeconds")
    if not isinstance(grace, int) or grace <= pre + drain:
        fail(f"[{render}] terminationGracePeriodSeconds={grace} must exceed preDrainDelay+drainWindow={pre + drain}")
    else:
        print(f"  ok   terminationGracePeriodSeconds={grace} > preDrainDelay {pre}s + drainWindow {drain}s")
    if "lifecycle" in c:
        fail(f"[{render}] unexpected lifecycle hook (distroless image has no shell)")
    if "checksum/config" not in pod["metadata"].get("annotations", {}):
        fail(f"[{render}] pod annotation checksum/config missing")
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
    for ok, what in hardened:
        if not ok:
            fail(f"[{render}] security context: {what}")
    env = {e["name"]: e for e in c.get("env", [])}
    for var, key in (("GATEWAY_JWT_SECRET", "jwt-secret"), ("GATEWAY_API_KEY", "api-key")):
        if env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {}).get("key") != key:
            fail(f"[{render}] {var} must come from secret key {key}")
    if render != "default" and env.get("REDIS_URL", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("key") != "redis-url":
        fail(f"[{render}] REDIS_URL must come from secret key redis-url")
    if render == "default" and "REDIS_URL" in env:
        fail("[default] REDIS_URL set although no Redis URL is configured")
    svcs = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    admin = [s for s in svcs.values() if s["spec"]["ports"][0]["name"] == "admin"]
    public = [s for s in svcs.values() if s["spec"]["ports"][0]["name"] == "ws"]
    if len(admin) != 1 or len(public) != 1 or admin[0]["spec"]["type"] != "ClusterIP":
        fail(f"[{render}] want one public ws Service and one ClusterIP admin Service")
    print(f"  ok   deployment, services and security context checks ({render})")

    if render == "all-on":
        pr = by_kind["PrometheusRule"][0]
        if pr["spec"] != alerts:
            fail("[all-on] PrometheusRule spec differs from files/alerts.yaml")
        else:
            print("  ok   PrometheusRule spec == files/alerts.yaml")
        sm = by_kind["ServiceMonitor"][0]
        ep = sm["spec"]["endpoints"][0]
        sel = sm["spec"]["selector"]["matchLabels"]
        if ep.get("port") != "admin" or ep.get("path") != "/metrics":
            fail(f"[all-on] ServiceMonitor endpoint {ep}")
        if not all(admin[0]["metadata"]["labels"].get(k) == v for k, v in sel.items()) or \
                any(all(s["metadata"]["labels"].get(k) == v for k, v in sel.items()) for s in public):
            fail("[all-on] ServiceMonitor selector must match the admin Service only")
        else:
            print("  ok   ServiceMonitor scrapes the admin Service's /metrics")
        hpa = by_kind["HorizontalPodAutoscaler"][0]["spec"]["metrics"]
        if {m["type"] for m in hpa} != {"Resource", "Pods"} or \
                not any(m.get("pods", {}).get("metric", {}).get("name") == "gleepost_gateway_connections" for m in hpa):
            fail(f"[all-on] HPA metrics {hpa}")
        if "replicas" in dep["spec"]:
            fail("[all-on] Deployment sets replicas although the HPA owns them")
    if render == "existing-secret":
        if grace != 5 + 120 + 10:
            fail(f"[existing-secret] grace {grace} != 5s + 2m + 10s margin")
        if env["GATEWAY_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] != "gw-creds" or \
                env["REDIS_URL"]["valueFrom"]["secretKeyRef"].get("optional") is not True:
            fail("[existing-secret] env must use secret gw-creds with optional redis-url")

if failures:
    print(f"\n{len(failures)} check(s) failed")
    sys.exit(1)
