#!/usr/bin/env bash
# Offline checks of the Helm chart helm/gleepost-gateway:
#   1. helm lint --strict, with default values, with every optional feature on
#      (helm/gleepost-gateway/ci/all-on-values.yaml), on a Redis Cluster
#      (ci/cluster-values.yaml) and on Redis Sentinel (ci/sentinel-values.yaml);
#   2. helm template of several value sets; the rendered manifests are validated
#      against the Kubernetes JSON schemas (PyPI kubernetes-validate, strict, for
#      each version in K8S_VERSIONS); CRD kinds (ServiceMonitor, PrometheusRule)
#      are not in those schemas and are skipped there, by name, but get the
#      chart-specific checks below;
#   3. chart-specific checks on the rendered output (scripts/chart_check_manifests.py):
#      terminationGracePeriodSeconds = preStop sleep + GATEWAY_PRE_DRAIN_DELAY +
#      GATEWAY_DRAIN_WINDOW + 7 s exit waits + margin, REDIS_URL, REDIS_CLUSTER_URLS
#      or REDIS_SENTINEL_URLS (exactly one) required from its Secret key (or none,
#      with one Recreate pod on the embedded broker), Sentinel's master and data
#      node settings (ConfigMap, password from the Secret) and egress to the
#      sentinels' port, GATEWAY_PUBLISH_REPLICAS, pod
#      template labels = selector labels (a chart version bump leaves the pod
#      template unchanged), PDB unhealthyPodEvictionPolicy, probes, ports,
#      security context, PrometheusRule == files/alerts.yaml, ServiceMonitor wiring;
#   4. yamllint (helm/.yamllint) on values, Chart.yaml, the alerts file and the
#      rendered manifests;
#   5. promtool check rules + promtool test rules on the alerts; every alert has a
#      firing and a silent test case, docs/operations.md lists every alert and
#      the metrics they use; the Grafana dashboard uses only its ${datasource}
#      variable (sidecar provisioning and manual import) and every query parses;
#      the documented prometheus-adapter rule serves the HPA metric per pod
#      (scripts/chart_check_monitoring.py);
#   6. bad values must FAIL to render (schema and template checks), each with its
#      message checked; edge values that must render do.
# Tools: helm (scripts/fetch-helm.sh, cached in .cache/helm/), a venv with
# kubernetes-validate and yamllint (.cache/chart-check-venv/; python3-venv, which
# .ci/run installs), promtool (scripts/fetch-promtool.sh: unpacked from Debian's
# "prometheus" package into .cache/promtool/, no server installed). A missing tool
# is an error, never a skip. Rendered manifests are left in .cache/chart-check/.
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

command -v python3 >/dev/null 2>&1 || die "python3 is required (apt-get install -y --no-install-recommends python3 python3-venv)"
want_stamp="$(python3 --version 2>&1) ${PY_REQS[*]}"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$want_stamp" ]; then
  echo "creating $VENV (${PY_REQS[*]})"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install -y --no-install-recommends python3-venv)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_REQS[@]}" \
    || die "pip install ${PY_REQS[*]} failed (is PyPI reachable?)"
  echo "$want_stamp" > "$VENV/.stamp"
fi
"$VENV/bin/python" -c 'import kubernetes_validate, yaml' || die "kubernetes-validate is not importable from $VENV"
[ -x "$VENV/bin/yamllint" ] || die "yamllint missing from $VENV"
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -1), yamllint: $("$VENV/bin/yamllint" --version)"

# promtool without a Prometheus server: see scripts/fetch-promtool.sh (a promtool on the PATH
# is used; otherwise the Debian package's binary is unpacked into .cache/promtool/, never
# installed, so no service starts on :9090).
PROMTOOL="$("$ROOT/scripts/fetch-promtool.sh")" || die "promtool is unavailable (scripts/fetch-promtool.sh failed)"
promtool() { "$PROMTOOL" "$@"; }
echo "promtool: $(promtool --version 2>&1 | head -1)"

# ---------------------------------------------------------------- lint
step "helm lint --strict (defaults)"
"$HELM" lint --strict "$CHART"
step "helm lint --strict (ci/all-on-values.yaml)"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/all-on-values.yaml"
step "helm lint --strict (ci/cluster-values.yaml)"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/cluster-values.yaml"
step "helm lint --strict (ci/sentinel-values.yaml)"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/sentinel-values.yaml"

# ---------------------------------------------------------------- render
step "helm template"
rm -rf "$OUT" && mkdir -p "$OUT"
render_chart() { # chart dir, name, helm template args...
  local chart="$1" name="$2"; shift 2
  "$HELM" template gw "$chart" --namespace realtime "$@" > "$OUT/$name.yaml" \
    || die "helm template ($name) failed"
  echo "rendered $name -> ${OUT#"$ROOT"/}/$name.yaml"
}
render() { render_chart "$CHART" "$@"; }
render default
render all-on -f "$CHART/ci/all-on-values.yaml"
# Redis URL from an existing Secret (default key redis-url), several replicas.
render existing-secret --set secrets.existingSecret=gw-creds --set replicaCount=2 \
  --set service.type=NodePort --set service.nodePort=30080 --set config.drainWindow=2m \
  --set podDisruptionBudget.enabled=true --set podDisruptionBudget.maxUnavailable=null \
  --set podDisruptionBudget.minAvailable=50% --set config.queueEvents=256
# ... under another key.
render existing-secret-key --set secrets.existingSecret=gw-creds \
  --set secrets.existingSecretRedisUrlKey=url --set replicaCount=3
# ... an existing Secret without a Redis URL: the embedded broker, one pod.
render existing-secret-embedded --set secrets.existingSecret=gw-creds \
  --set secrets.existingSecretRedisUrlKey= --set config.maxConnections=0
# Redis Cluster: seed URLs in the chart's Secret, publishReplicas 1, HPA, PDB, a surge.
render cluster -f "$CHART/ci/cluster-values.yaml"
# ... seed URLs from an existing Secret's key (the Redis URL key emptied), several pods.
render existing-secret-cluster --set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisUrlKey= \
  --set secrets.existingSecretRedisClusterUrlsKey=cluster-seeds --set replicaCount=4
# Redis Sentinel: sentinel URLs and data nodes' password in the chart's Secret, master,
# user and db in the ConfigMap, publishReplicas 1, HPA, PDB, a surge, egress to 26379.
render sentinel -f "$CHART/ci/sentinel-values.yaml"
# ... sentinel URLs and the data nodes' password from an existing Secret's keys, several pods.
render existing-secret-sentinel --set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisUrlKey= \
  --set secrets.existingSecretRedisSentinelUrlsKey=sentinels --set secrets.existingSecretRedisSentinelNodePasswordKey=node-password \
  --set config.redisSentinelMaster=mymaster --set replicaCount=4
# The same chart with only its version bumped (appVersion unchanged): the pod
# templates must come out identical, or a chart-only upgrade restarts every pod.
BUMPED="$OUT/bumped-chart"
mkdir -p "$BUMPED" && cp -r "$CHART" "$BUMPED/"
sed -i 's/^version: .*/version: 99.0.0/' "$BUMPED/gleepost-gateway/Chart.yaml"
render_chart "$BUMPED/gleepost-gateway" bump-default
render_chart "$BUMPED/gleepost-gateway" bump-all-on -f "$CHART/ci/all-on-values.yaml"

# ---------------------------------------------------------------- validate
step "Kubernetes schema validation (kubernetes-validate, strict, k8s $K8S_VERSIONS) + chart checks"
"$VENV/bin/python" "$ROOT/scripts/chart_check_manifests.py" "$OUT" "$CHART" "$K8S_VERSIONS" \
  || die "rendered manifests failed the checks above"

# ---------------------------------------------------------------- yamllint
step "yamllint"
"$VENV/bin/yamllint" --strict -c "$ROOT/helm/.yamllint" \
  "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART/ci/all-on-values.yaml" "$CHART/ci/cluster-values.yaml" \
  "$CHART/ci/sentinel-values.yaml" \
  "$CHART/files/alerts.yaml" "$ROOT/helm/tests/alerts.test.yaml" "$OUT"/*.yaml
echo "yamllint: ok"

# ---------------------------------------------------------------- promtool
step "promtool"
promtool check rules "$CHART/files/alerts.yaml"
promtool test rules "$ROOT/helm/tests/alerts.test.yaml"
"$VENV/bin/python" "$ROOT/scripts/chart_check_monitoring.py" "$ROOT" "$OUT" \
  || die "alert tests, dashboard or docs are out of step (see above)"
# Every dashboard query and the prometheus-adapter rule's query must parse, and the
# adapter's query must answer connections per pod (files written by the step above).
promtool check rules "$OUT/monitoring-exprs.rules.yaml"
promtool test rules "$OUT/adapter.test.yaml"

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
expect_ok() { # description, helm template args...
  local what="$1"; shift
  "$HELM" template gw "$CHART" "$@" >/dev/null || die "helm template refused $what ($*)"
  echo "ok: accepted $what"
}
NOSCHEMA=--skip-schema-validation  # reach the template's own check behind a schema rule
expect_fail "service.type=Bogus (schema enum)" "schema.*/service/type.*must be one of" --set service.type=Bogus
expect_fail "config.logFormat=xml (schema enum)" "schema.*/config/logFormat.*must be one of" --set config.logFormat=xml
expect_fail "config.drainWindow=20 (duration without unit)" "schema.*/config/drainWindow.*does not match pattern" --set-string config.drainWindow=20
expect_fail "config.probeInterval=0s (timers must be longer than zero)" "schema.*/config/probeInterval" --set-string config.probeInterval=0s
expect_ok "config.drainWindow=0s (the drain's waits may be zero)" --set-string config.drainWindow=0s
expect_fail "replicaCount=\"two\" (type)" "schema.*/replicaCount.*want integer" --set-string replicaCount=two
expect_fail "misspelt key servce.type (additionalProperties)" "schema.*additional properties 'servce' not allowed" --set servce.type=ClusterIP
expect_fail "config.maxConnections=-1 (schema minimum)" "schema.*/config/maxConnections.*minimum" --set config.maxConnections=-1
# Grace period: preStop sleep + pre-drain + drain + 7 s exit waits + margin.
expect_fail "terminationGracePeriodSeconds=41 (< 5s + 20s + 7s + 10s)" \
  "terminationGracePeriodSeconds=41 is too short: .*config.preDrainDelay \(5\) \+ config.drainWindow \(20\) \+ 7 s of exit waits.*gracePeriodMarginSeconds \(10\) = 42 seconds" \
  --set terminationGracePeriodSeconds=41
expect_ok "terminationGracePeriodSeconds=42 (= the minimum)" --set terminationGracePeriodSeconds=42
expect_fail "terminationGracePeriodSeconds=51 with a 10 s preStop sleep" \
  "terminationGracePeriodSeconds=51 is too short: it must be at least lifecycle.preStop.sleep.seconds \(10\) .*= 52 seconds" \
  --set lifecycle.preStop.sleep.seconds=10 --set terminationGracePeriodSeconds=51
expect_fail "terminationGracePeriodSeconds=130 with a 2m drain and margin 3" "terminationGracePeriodSeconds=130 is too short: .*= 135 seconds" \
  --set config.drainWindow=2m --set gracePeriodMarginSeconds=3 --set terminationGracePeriodSeconds=130
expect_fail "terminationGracePeriodSeconds=9 (schema: below 7 s exit waits + 3 s margin)" \
  "schema.*/terminationGracePeriodSeconds.*minimum" --set terminationGracePeriodSeconds=9
expect_fail "gracePeriodMarginSeconds=2 (schema minimum 3)" "schema.*/gracePeriodMarginSeconds.*minimum" --set gracePeriodMarginSeconds=2
expect_fail "lifecycle.preStop.sleep.seconds=-1 (schema minimum)" "schema.*/lifecycle/preStop/sleep/seconds.*minimum" \
  --set lifecycle.preStop.sleep.seconds=-1
expect_fail "lifecycle.preStop.sleep without seconds (schema required)" "schema.*/lifecycle/preStop/sleep.*missing propert.*seconds" \
  --set lifecycle.preStop.sleep.secs=5
# Embedded broker: one pod, never two at once.
expect_fail "replicaCount=3 with the embedded broker" "replicaCount > 1 needs a Redis broker" --set replicaCount=3
expect_fail "autoscaling with the embedded broker" "autoscaling.enabled needs a Redis broker" --set autoscaling.enabled=true
expect_fail "existingSecret without a Redis URL key and replicaCount=2" "replicaCount > 1 needs a Redis broker" \
  --set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisUrlKey= --set replicaCount=2
expect_fail "existingSecret without a Redis URL key and autoscaling" "autoscaling.enabled needs a Redis broker" \
  --set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisUrlKey= --set autoscaling.enabled=true
expect_fail "strategy.type=RollingUpdate (default surge) with the embedded broker" \
  "a rolling update with maxSurge 25% runs two embedded brokers at once" --set strategy.type=RollingUpdate
expect_fail "strategy.rollingUpdate.maxSurge=1 with the embedded broker" \
  "a rolling update with maxSurge 1 runs two embedded brokers at once" \
  --set strategy.type=RollingUpdate --set strategy.rollingUpdate.maxSurge=1 --set strategy.rollingUpdate.maxUnavailable=0
expect_ok "strategy.type=Recreate with the embedded broker" --set strategy.type=Recreate
expect_ok "maxSurge=0/maxUnavailable=1 with the embedded broker" \
  --set strategy.type=RollingUpdate --set strategy.rollingUpdate.maxSurge=0 --set strategy.rollingUpdate.maxUnavailable=1
expect_fail "strategy.type=Bogus (schema enum)" "schema.*/strategy/type.*must be one of" --set strategy.type=Bogus
expect_fail "existingSecret together with secrets.redisUrl" \
  "secrets.existingSecret is set, so secrets.jwtSecret, secrets.apiKey, secrets.redisUrl, secrets.redisClusterUrls, secrets.redisSentinelUrls and secrets.redisSentinelNodePassword would be ignored" \
  --set secrets.existingSecret=gw-creds --set secrets.redisUrl=redis://r:6379/
expect_fail "secrets.existingSecretRedisUrlKey with a space (schema pattern)" "schema.*/secrets/existingSecretRedisUrlKey.*does not match pattern" \
  --set secrets.existingSecret=gw-creds --set "secrets.existingSecretRedisUrlKey=redis url"
# Redis Cluster: exactly one Redis; a cluster counts as Redis for every rule above.
CLUSTER=(--set 'secrets.redisClusterUrls=redis://:pw@rc-0.rc:6379\,redis://:pw@rc-1.rc:6379')
SECRET_CLUSTER=(--set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisUrlKey=
  --set secrets.existingSecretRedisClusterUrlsKey=cluster-seeds)
expect_fail "secrets.redisUrl together with secrets.redisClusterUrls" \
  "secrets.redisUrl and secrets.redisClusterUrls are both set: configure exactly one Redis .*the gateway refuses to start with REDIS_URL and REDIS_CLUSTER_URLS" \
  --set secrets.redisUrl=redis://r:6379/ "${CLUSTER[@]}"
expect_fail "existingSecret with both a Redis URL key (default redis-url) and a cluster key" \
  "secrets.existingSecretRedisUrlKey \(\"redis-url\"\) and secrets.existingSecretRedisClusterUrlsKey \(\"cluster-seeds\"\) are both set: configure exactly one Redis.*For a cluster or Sentinel set secrets.existingSecretRedisUrlKey to \"\"" \
  --set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisClusterUrlsKey=cluster-seeds
expect_fail "existingSecret together with secrets.redisClusterUrls" \
  "secrets.existingSecret is set, so secrets.jwtSecret, secrets.apiKey, secrets.redisUrl, secrets.redisClusterUrls, secrets.redisSentinelUrls and secrets.redisSentinelNodePassword would be ignored" \
  --set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisUrlKey= "${CLUSTER[@]}"
expect_fail "secrets.redisClusterUrls with rediss:// (schema pattern)" "schema.*/secrets/redisClusterUrls.*does not match pattern" \
  --set secrets.redisClusterUrls=rediss://rc-0.rc:6379
expect_fail "secrets.redisClusterUrls without a scheme (schema pattern)" "schema.*/secrets/redisClusterUrls.*does not match pattern" \
  --set secrets.redisClusterUrls=rc-0.rc:6379
expect_fail "secrets.redisClusterUrls with an empty seed (schema pattern)" "schema.*/secrets/redisClusterUrls.*does not match pattern" \
  --set 'secrets.redisClusterUrls=redis://rc-0.rc:6379\,\,redis://rc-1.rc:6379'
expect_fail "secrets.existingSecretRedisClusterUrlsKey with a space (schema pattern)" \
  "schema.*/secrets/existingSecretRedisClusterUrlsKey.*does not match pattern" \
  --set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisUrlKey= --set "secrets.existingSecretRedisClusterUrlsKey=cluster seeds"
expect_ok "secrets.redisClusterUrls with spaces after the commas" --set 'secrets.redisClusterUrls=redis://rc-0.rc:6379\, redis://rc-1.rc:6379'
expect_ok "replicaCount=3 on a cluster" "${CLUSTER[@]}" --set replicaCount=3
expect_ok "autoscaling on a cluster" "${CLUSTER[@]}" --set autoscaling.enabled=true
expect_ok "strategy.rollingUpdate.maxSurge=1 on a cluster" "${CLUSTER[@]}" \
  --set strategy.type=RollingUpdate --set strategy.rollingUpdate.maxSurge=1 --set strategy.rollingUpdate.maxUnavailable=0
expect_ok "replicaCount=3 on a cluster from existingSecret" "${SECRET_CLUSTER[@]}" --set replicaCount=3
expect_ok "autoscaling on a cluster from existingSecret" "${SECRET_CLUSTER[@]}" --set autoscaling.enabled=true
expect_ok "strategy.type=RollingUpdate (default surge) on a cluster from existingSecret" "${SECRET_CLUSTER[@]}" \
  --set strategy.type=RollingUpdate
# Redis Sentinel: exactly one Redis, the master name required, its settings only with it;
# Sentinel counts as Redis for every rule above.
SENTINEL=(--set 'secrets.redisSentinelUrls=redis://:spw@s-0.redis:26379\,redis://:spw@s-1.redis:26379' --set config.redisSentinelMaster=mymaster)
SECRET_SENTINEL=(--set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisUrlKey=
  --set secrets.existingSecretRedisSentinelUrlsKey=sentinels --set config.redisSentinelMaster=mymaster)
expect_fail "secrets.redisUrl together with secrets.redisSentinelUrls" \
  "secrets.redisUrl and secrets.redisSentinelUrls are both set: configure exactly one Redis .*the gateway refuses to start with REDIS_URL and REDIS_SENTINEL_URLS" \
  --set secrets.redisUrl=redis://r:6379/ "${SENTINEL[@]}"
expect_fail "secrets.redisClusterUrls together with secrets.redisSentinelUrls" \
  "secrets.redisClusterUrls and secrets.redisSentinelUrls are both set: .*refuses to start with REDIS_CLUSTER_URLS and REDIS_SENTINEL_URLS" \
  "${CLUSTER[@]}" "${SENTINEL[@]}"
expect_fail "a Redis URL, cluster seeds and sentinels at once" \
  "secrets.redisUrl, secrets.redisClusterUrls and secrets.redisSentinelUrls are all set: .*REDIS_URL, REDIS_CLUSTER_URLS and REDIS_SENTINEL_URLS" \
  --set secrets.redisUrl=redis://r:6379/ "${CLUSTER[@]}" "${SENTINEL[@]}"
expect_fail "existingSecret with a Redis URL key (default redis-url) and a Sentinel key" \
  "secrets.existingSecretRedisUrlKey \(\"redis-url\"\) and secrets.existingSecretRedisSentinelUrlsKey \(\"sentinels\"\) are both set: .*For a cluster or Sentinel set secrets.existingSecretRedisUrlKey to \"\"" \
  --set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisSentinelUrlsKey=sentinels --set config.redisSentinelMaster=mymaster
expect_fail "existingSecret with a cluster key and a Sentinel key" \
  "secrets.existingSecretRedisClusterUrlsKey \(\"cluster-seeds\"\) and secrets.existingSecretRedisSentinelUrlsKey \(\"sentinels\"\) are both set" \
  "${SECRET_SENTINEL[@]}" --set secrets.existingSecretRedisClusterUrlsKey=cluster-seeds
expect_fail "secrets.redisSentinelUrls without config.redisSentinelMaster" \
  "Redis Sentinel is configured \(REDIS_SENTINEL_URLS\) but config.redisSentinelMaster is not set: name the master the sentinels monitor.*refuses to start without REDIS_SENTINEL_MASTER" \
  --set 'secrets.redisSentinelUrls=redis://s-0.redis:26379'
expect_fail "existingSecretRedisSentinelUrlsKey without config.redisSentinelMaster" \
  "Redis Sentinel is configured \(REDIS_SENTINEL_URLS\) but config.redisSentinelMaster is not set" \
  --set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisUrlKey= --set secrets.existingSecretRedisSentinelUrlsKey=sentinels
expect_fail "config.redisSentinelMaster of spaces (schema pattern)" "schema.*/config/redisSentinelMaster.*does not match pattern" \
  --set 'secrets.redisSentinelUrls=redis://s-0.redis:26379' --set 'config.redisSentinelMaster=  '
expect_fail "config.redisSentinelMaster without Sentinel (on a Redis URL)" \
  "Sentinel settings without Sentinel: config.redisSentinelMaster set, but neither secrets.redisSentinelUrls nor secrets.existingSecretRedisSentinelUrlsKey is" \
  --set secrets.redisUrl=redis://r:6379/ --set config.redisSentinelMaster=mymaster
expect_fail "the data nodes' user, db and password without Sentinel (embedded broker)" \
  "Sentinel settings without Sentinel: config.redisSentinelNodeUsername, config.redisSentinelNodeDb, secrets.redisSentinelNodePassword set" \
  --set config.redisSentinelNodeUsername=gw --set config.redisSentinelNodeDb=1 --set secrets.redisSentinelNodePassword=pw
expect_fail "existingSecretRedisSentinelNodePasswordKey without existingSecret" \
  "secrets.existingSecretRedisSentinelNodePasswordKey names a key of secrets.existingSecret, which is not set" \
  "${SENTINEL[@]}" --set secrets.existingSecretRedisSentinelNodePasswordKey=node-password
expect_fail "existingSecret together with secrets.redisSentinelUrls" \
  "secrets.existingSecret is set, so .*secrets.redisSentinelUrls and secrets.redisSentinelNodePassword would be ignored" \
  --set secrets.existingSecret=gw-creds --set secrets.existingSecretRedisUrlKey= "${SENTINEL[@]}"
expect_fail "existingSecret together with secrets.redisSentinelNodePassword" \
  "secrets.existingSecret is set, so .*secrets.redisSentinelNodePassword would be ignored" \
  "${SECRET_SENTINEL[@]}" --set secrets.redisSentinelNodePassword=pw
expect_fail "secrets.redisSentinelUrls with rediss:// (schema pattern)" "schema.*/secrets/redisSentinelUrls.*does not match pattern" \
  --set secrets.redisSentinelUrls=rediss://s-0.redis:26379 --set config.redisSentinelMaster=mymaster
expect_fail "config.redisSentinelNodeDb=-1 (schema minimum)" "schema.*/config/redisSentinelNodeDb.*minimum" \
  "${SENTINEL[@]}" --set config.redisSentinelNodeDb=-1
expect_fail "networkPolicy.redis.sentinelPorts=[0] (schema minimum)" "schema.*/networkPolicy/redis/sentinelPorts/0.*minimum" \
  "${SENTINEL[@]}" --set networkPolicy.enabled=true --set 'networkPolicy.redis.sentinelPorts={0}'
expect_ok "replicaCount=3 on Sentinel" "${SENTINEL[@]}" --set replicaCount=3
expect_ok "autoscaling on Sentinel" "${SENTINEL[@]}" --set autoscaling.enabled=true
expect_ok "strategy.type=RollingUpdate (default surge) on Sentinel" "${SENTINEL[@]}" --set strategy.type=RollingUpdate
expect_ok "replicaCount=3 on Sentinel from existingSecret" "${SECRET_SENTINEL[@]}" --set replicaCount=3
expect_ok "autoscaling on Sentinel from existingSecret" "${SECRET_SENTINEL[@]}" --set autoscaling.enabled=true
expect_ok "strategy.rollingUpdate.maxSurge=1 on Sentinel from existingSecret" "${SECRET_SENTINEL[@]}" \
  --set strategy.type=RollingUpdate --set strategy.rollingUpdate.maxSurge=1 --set strategy.rollingUpdate.maxUnavailable=0
# publishReplicas: Redis WAIT, so Redis only.
expect_fail "config.publishReplicas=-1 (schema minimum)" "schema.*/config/publishReplicas.*minimum" --set config.publishReplicas=-1
expect_fail "config.publishReplicas=\"one\" (type)" "schema.*/config/publishReplicas.*want integer" --set-string config.publishReplicas=one
expect_fail "config.publishReplicas=1 with the embedded broker" \
  "config.publishReplicas=1 needs a Redis broker with replicas \(Redis WAIT\); the embedded broker has none" --set config.publishReplicas=1
expect_ok "config.publishReplicas=1 with a Redis URL" --set secrets.redisUrl=redis://r:6379/ --set config.publishReplicas=1
expect_ok "config.publishReplicas=2 on a cluster from existingSecret" "${SECRET_CLUSTER[@]}" --set config.publishReplicas=2
expect_ok "config.publishReplicas=1 on Sentinel" "${SENTINEL[@]}" --set config.publishReplicas=1
expect_ok "config.publishReplicas=1 on Sentinel from existingSecret" "${SECRET_SENTINEL[@]}" --set config.publishReplicas=1
# Labels, PDB, HPA.
expect_fail "podLabels overriding a selector label" "podLabels must not set the selector label app.kubernetes.io/instance" \
  --set podLabels."app\.kubernetes\.io/instance"=other
expect_fail "PDB with both minAvailable and maxUnavailable" "only one of minAvailable or maxUnavailable" \
  --set podDisruptionBudget.enabled=true --set podDisruptionBudget.minAvailable=1
expect_fail "podDisruptionBudget.unhealthyPodEvictionPolicy=Never (schema enum)" "schema.*/podDisruptionBudget/unhealthyPodEvictionPolicy.*must be one of" \
  --set podDisruptionBudget.enabled=true --set podDisruptionBudget.unhealthyPodEvictionPolicy=Never
expect_fail "connections metric without an adapter (schema)" "schema.*/autoscaling/connections/adapter.*minLength" \
  --set secrets.redisUrl=redis://r:6379/ --set autoscaling.enabled=true --set autoscaling.connections.enabled=true
expect_fail "connections metric without an adapter (template)" \
  "autoscaling.connections.enabled needs autoscaling.connections.adapter: name the custom metrics adapter that serves gleepost_gateway_connections per pod" \
  $NOSCHEMA --set secrets.redisUrl=redis://r:6379/ --set autoscaling.enabled=true --set autoscaling.connections.enabled=true
expect_ok "connections metric with adapter=prometheus-adapter" --set secrets.redisUrl=redis://r:6379/ \
  --set autoscaling.enabled=true --set autoscaling.connections.enabled=true --set autoscaling.connections.adapter=prometheus-adapter

step "chart-check: all checks passed"
