#!/usr/bin/env bash
# Offline checks of the Helm chart helm/gleepost-gateway:
#   1. helm lint --strict, with default values and with every optional feature on
#      (helm/gleepost-gateway/ci/all-on-values.yaml);
#   2. helm template of several value sets; the rendered manifests are validated
#      against the Kubernetes JSON schemas (PyPI kubernetes-validate, strict, for
#      each version in K8S_VERSIONS); CRD kinds (ServiceMonitor, PrometheusRule)
#      are not in those schemas and are skipped there, by name, but get the
#      chart-specific checks below;
#   3. chart-specific checks on the rendered output: terminationGracePeriodSeconds
#      > GATEWAY_PRE_DRAIN_DELAY + GATEWAY_DRAIN_WINDOW, probes, ports, security
#      context, PrometheusRule == files/alerts.yaml, ServiceMonitor wiring;
#   4. yamllint (helm/.yamllint) on values, Chart.yaml, the alerts file and the
#      rendered manifests;
#   5. promtool check rules + promtool test rules on the alerts;
#   6. bad values must FAIL to render (schema and template checks).
# Tools: helm (scripts/fetch-helm.sh, cached in .cache/helm/), a venv with
# kubernetes-validate and yamllint (.cache/chart-check-venv/), promtool (Debian
# package "prometheus", installed with apt-get when missing). A missing tool is an
# error, never a skip. Rendered manifests are left in .cache/chart-check/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/gleepost-gateway"
CACHE="$ROOT/.cache"
VENV="$CACHE/chart-check-venv"
OUT="$CACHE/chart-check"
PY_REQS=("kubernetes-validate==1.37.0" "yamllint==1.38.0")
# Oldest Kubernetes minor the chart targets, and a recent one.
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.35.0}"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'chart-check: ERROR: %s\n' "$*" >&2; exit 1; }

cd "$ROOT"
[ -f "$CHART/Chart.yaml" ] || die "chart not found at $CHART"

# ---------------------------------------------------------------- tools
step "tools"
HELM="$("$ROOT/scripts/fetch-helm.sh")" || die "helm is unavailable (scripts/fetch-helm.sh failed)"
echo "helm: $HELM ($("$HELM" version --short))"

command -v python3 >/dev/null 2>&1 || die "python3 is required (apt-get install -y python3 python3-venv)"
want_stamp="$(python3 --version 2>&1) ${PY_REQS[*]}"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$want_stamp" ]; then
  echo "creating $VENV (${PY_REQS[*]})"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install -y python3-venv)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_REQS[@]}" \
    || die "pip install ${PY_REQS[*]} failed (is PyPI reachable?)"
  echo "$want_stamp" > "$VENV/.stamp"
fi
"$VENV/bin/python" -c 'import kubernetes_validate, yaml' || die "kubernetes-validate is not importable from $VENV"
[ -x "$VENV/bin/yamllint" ] || die "yamllint missing from $VENV"
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -1), yamllint: $("$VENV/bin/yamllint" --version)"

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: installing Debian package 'prometheus'"
  command -v apt-get >/dev/null 2>&1 || die "promtool is missing and apt-get is unavailable: install promtool (Debian package 'prometheus')"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends prometheus >/dev/null; }; } \
    || die "apt-get install prometheus failed: promtool is required (it is not on PyPI); install it and re-run"
  command -v promtool >/dev/null 2>&1 || die "promtool still missing after installing 'prometheus'"
fi
echo "promtool: $(promtool --version 2>&1 | head -1)"

# ---------------------------------------------------------------- lint
step "helm lint --strict (defaults)"
"$HELM" lint --strict "$CHART"
step "helm lint --strict (ci/all-on-values.yaml)"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/all-on-values.yaml"

# ---------------------------------------------------------------- render
step "helm template"
rm -rf "$OUT" && mkdir -p "$OUT"
render() { # name, helm template args...
  local name="$1"; shift
  "$HELM" template gw "$CHART" --namespace realtime "$@" > "$OUT/$name.yaml" \
    || die "helm template ($name) failed"
  echo "rendered $name -> ${OUT#"$ROOT"/}/$name.yaml"
}
render default
render all-on -f "$CHART/ci/all-on-values.yaml"
render existing-secret --set secrets.existingSecret=gw-creds --set replicaCount=2 \
  --set service.type=NodePort --set service.nodePort=30080 --set config.drainWindow=2m \
  --set podDisruptionBudget.enabled=true --set podDisruptionBudget.maxUnavailable=null \
  --set podDisruptionBudget.minAvailable=50% --set config.queueEvents=256

# ---------------------------------------------------------------- validate
step "Kubernetes schema validation (kubernetes-validate, strict, k8s $K8S_VERSIONS) + chart checks"
"$VENV/bin/python" "$ROOT/scripts/chart_check_manifests.py" "$OUT" "$CHART" "$K8S_VERSIONS" \
  || die "rendered manifests failed the checks above"

# ---------------------------------------------------------------- yamllint
step "yamllint"
"$VENV/bin/yamllint" --strict -c "$ROOT/helm/.yamllint" \
  "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART/ci/all-on-values.yaml" \
  "$CHART/files/alerts.yaml" "$ROOT/helm/tests/alerts.test.yaml" "$OUT"/*.yaml
echo "yamllint: ok"

# ---------------------------------------------------------------- promtool
step "promtool"
promtool check rules "$CHART/files/alerts.yaml"
promtool test rules "$ROOT/helm/tests/alerts.test.yaml"

# ---------------------------------------------------------------- negative
step "bad values must be rejected"
expect_fail() { # description, expected message regex, helm template args...
  local what="$1" want="$2"; shift 2
  local err
  if err="$("$HELM" template gw "$CHART" "$@" 2>&1 >/dev/null)"; then
    die "helm template accepted $what ($*)"
  fi
  tr '\n' ' ' <<<"$err" | grep -Eq "$want" || die "helm template rejected $what but not with /$want/: $err"
  echo "ok: rejected $what"
}
expect_fail "service.type=Bogus (schema enum)" "schema.*/service/type.*must be one of" --set service.type=Bogus
expect_fail "config.logFormat=xml (schema enum)" "schema.*/config/logFormat.*must be one of" --set config.logFormat=xml
expect_fail "config.drainWindow=20 (duration without unit)" "schema.*/config/drainWindow.*does not match pattern" --set-string config.drainWindow=20
expect_fail "replicaCount=\"two\" (type)" "schema.*/replicaCount.*want integer" --set-string replicaCount=two
expect_fail "misspelt key servce.type (additionalProperties)" "schema.*additional properties 'servce' not allowed" --set servce.type=ClusterIP
expect_fail "terminationGracePeriodSeconds=20 (<= 5s+20s)" "terminationGracePeriodSeconds=20 must be greater" --set terminationGracePeriodSeconds=20
expect_fail "replicaCount=3 with the embedded broker" "replicaCount > 1 needs a Redis broker" --set replicaCount=3
expect_fail "autoscaling with the embedded broker" "autoscaling.enabled needs a Redis broker" --set autoscaling.enabled=true
expect_fail "PDB with both minAvailable and maxUnavailable" "only one of minAvailable or maxUnavailable" \
  --set podDisruptionBudget.enabled=true --set podDisruptionBudget.minAvailable=1

step "chart-check: all checks passed"
