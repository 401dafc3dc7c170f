{{/* vim: set filetype=mustache: */}}

{{/* Chart name. */}}
{{- define "gleepost-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 chars (DNS label limit).
The admin Service appends "-admin", so names are cut to 57 to leave room.
*/}}
{{- define "gleepost-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gleepost-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels (immutable on a Deployment: keep them minimal). */}}
{{- define "gleepost-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gleepost-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels on every resource. */}}
{{- define "gleepost-gateway.labels" -}}
helm.sh/chart: {{ include "gleepost-gateway.chart" . }}
{{ include "gleepost-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gleepost
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "gleepost-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gleepost-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding jwt-secret, api-key and (optional) redis-url,
redis-cluster-urls or redis-sentinel-urls (+ redis-sentinel-node-password).
*/}}
{{- define "gleepost-gateway.secretName" -}}
{{- default (include "gleepost-gateway.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "gleepost-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The variable that gives the pods their Redis, or empty for the embedded
single-node broker:
  REDIS_URL            one Redis server: secrets.redisUrl, or the existingSecret
                       key secrets.existingSecretRedisUrlKey ("redis-url" by default);
  REDIS_CLUSTER_URLS   a Redis Cluster's seed URLs: secrets.redisClusterUrls, or
                       the existingSecret key secrets.existingSecretRedisClusterUrlsKey;
  REDIS_SENTINEL_URLS  the sentinels of a primary under Redis Sentinel:
                       secrets.redisSentinelUrls, or the existingSecret key
                       secrets.existingSecretRedisSentinelUrlsKey (with
                       config.redisSentinelMaster, see sentinelNodePasswordKey).
More than one is refused by gleepost-gateway.validate (the binary refuses it too).
*/}}
{{- define "gleepost-gateway.redisEnv" -}}
{{- $s := .Values.secrets }}
{{- if $s.existingSecret }}
{{- if $s.existingSecretRedisSentinelUrlsKey }}REDIS_SENTINEL_URLS{{ else if $s.existingSecretRedisClusterUrlsKey }}REDIS_CLUSTER_URLS{{ else if $s.existingSecretRedisUrlKey }}REDIS_URL{{ end }}
{{- else if $s.redisSentinelUrls }}REDIS_SENTINEL_URLS
{{- else if $s.redisClusterUrls }}REDIS_CLUSTER_URLS
{{- else if $s.redisUrl }}REDIS_URL
{{- end }}
{{- end }}

{{/*
True ("true") when the pods get a Redis (a server, a cluster or Sentinel:
redisEnv is set), so several pods share one event stream. Empty: the embedded
single-node broker.
*/}}
{{- define "gleepost-gateway.hasRedis" -}}
{{- if include "gleepost-gateway.redisEnv" . }}true{{- end }}
{{- end }}

{{/* Key of the Secret that holds redisEnv's value (only meaningful when hasRedis). */}}
{{- define "gleepost-gateway.redisSecretKey" -}}
{{- $s := .Values.secrets }}
{{- $env := include "gleepost-gateway.redisEnv" . }}
{{- if eq $env "REDIS_SENTINEL_URLS" }}
{{- if $s.existingSecret }}{{ $s.existingSecretRedisSentinelUrlsKey }}{{ else }}redis-sentinel-urls{{ end }}
{{- else if eq $env "REDIS_CLUSTER_URLS" }}
{{- if $s.existingSecret }}{{ $s.existingSecretRedisClusterUrlsKey }}{{ else }}redis-cluster-urls{{ end }}
{{- else }}
{{- if $s.existingSecret }}{{ $s.existingSecretRedisUrlKey }}{{ else }}redis-url{{ end }}
{{- end }}
{{- end }}

{{/*
Key of the Secret that holds REDIS_SENTINEL_NODE_PASSWORD (the data nodes'
password under Sentinel), or empty when the data nodes need none:
secrets.redisSentinelNodePassword (chart Secret key redis-sentinel-node-password)
or the existingSecret key secrets.existingSecretRedisSentinelNodePasswordKey.
*/}}
{{- define "gleepost-gateway.sentinelNodePasswordKey" -}}
{{- $s := .Values.secrets }}
{{- if $s.existingSecret }}{{ $s.existingSecretRedisSentinelNodePasswordKey }}
{{- else if $s.redisSentinelNodePassword }}redis-sentinel-node-password
{{- end }}
{{- end }}

{{/*
Deployment strategy. strategy: {} picks one by broker: with Redis a rolling
update that surges (maxSurge 25%, maxUnavailable 0: full capacity while old pods
drain); with the embedded broker Recreate, because a surge would run two
brokers at once (events published on one pod never reach the other's clients).
*/}}
{{- define "gleepost-gateway.strategy" -}}
{{- if .Values.strategy }}
{{- toYaml .Values.strategy }}
{{- else if include "gleepost-gateway.hasRedis" . -}}
type: RollingUpdate
rollingUpdate:
  maxSurge: 25%
  maxUnavailable: 0
{{- else -}}
type: Recreate
{{- end }}
{{- end }}

{{/*
Duration string ("500ms", "30s", "2m", "1h") to whole seconds, rounded up.
Usage: include "gleepost-gateway.durationSeconds" (list "config.drainWindow" .Values.config.drainWindow)
*/}}
{{- define "gleepost-gateway.durationSeconds" -}}
{{- $key := index . 0 }}
{{- $d := index . 1 | toString }}
{{- if not (regexMatch "^[0-9]+(ms|s|m|h)$" $d) }}
{{- fail (printf "%s=%q is not a duration like 500ms, 30s, 2m or 1h" $key $d) }}
{{- end }}
{{- $n := regexFind "^[0-9]+" $d | atoi }}
{{- $unit := regexReplaceAll "^[0-9]+" $d "" }}
{{- if eq $unit "ms" }}{{ div (add $n 999) 1000 }}
{{- else if eq $unit "s" }}{{ $n }}
{{- else if eq $unit "m" }}{{ mul $n 60 }}
{{- else }}{{ mul $n 3600 }}
{{- end }}
{{- end }}

{{/*
Seconds the binary may still need after the drain window: up to 5 s for the
clients' close handshakes (CLOSE_WAIT in crates/gateway/src/server.rs), then up
to 2 s for the admin server to stop. Keep in sync with server.rs.
*/}}
{{- define "gleepost-gateway.exitWaitSeconds" -}}7{{- end }}

{{/* Seconds of a lifecycle.preStop.sleep hook (0 without one). */}}
{{- define "gleepost-gateway.preStopSleepSeconds" -}}
{{- $s := 0 }}
{{- with .Values.lifecycle }}{{ with .preStop }}{{ with .sleep }}{{ $s = int .seconds }}{{ end }}{{ end }}{{ end }}
{{- $s }}
{{- end }}

{{/*
Smallest terminationGracePeriodSeconds that lets a pod finish its drain: the
kubelet counts the grace period from the start of the preStop hook, then sends
SIGTERM; the binary waits preDrainDelay, closes connections over drainWindow,
then waits up to 7 s (exitWaitSeconds) before it exits; gracePeriodMarginSeconds
covers the rest (signal delivery, timer slack, the last close frames).
*/}}
{{- define "gleepost-gateway.minGracePeriodSeconds" -}}
{{- $hook := include "gleepost-gateway.preStopSleepSeconds" . | atoi }}
{{- $pre := include "gleepost-gateway.durationSeconds" (list "config.preDrainDelay" .Values.config.preDrainDelay) | atoi }}
{{- $drain := include "gleepost-gateway.durationSeconds" (list "config.drainWindow" .Values.config.drainWindow) | atoi }}
{{- $exit := include "gleepost-gateway.exitWaitSeconds" . | atoi }}
{{- add $hook $pre $drain $exit (int .Values.gracePeriodMarginSeconds) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: computed as minGracePeriodSeconds unless set
explicitly, in which case a smaller value fails the render (the kubelet would
SIGKILL a pod that is still draining: its last clients would see 1006).
*/}}
{{- define "gleepost-gateway.terminationGracePeriodSeconds" -}}
{{- $min := include "gleepost-gateway.minGracePeriodSeconds" . | atoi }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- $min }}
{{- else }}
{{- $set := int .Values.terminationGracePeriodSeconds }}
{{- if lt $set $min }}
{{- fail (printf "terminationGracePeriodSeconds=%d is too short: it must be at least lifecycle.preStop.sleep.seconds (%s) + config.preDrainDelay (%s) + config.drainWindow (%s) + %s s of exit waits (close handshakes, admin server) + gracePeriodMarginSeconds (%d) = %d seconds; leave it null to compute it" $set (include "gleepost-gateway.preStopSleepSeconds" .) (include "gleepost-gateway.durationSeconds" (list "config.preDrainDelay" .Values.config.preDrainDelay)) (include "gleepost-gateway.durationSeconds" (list "config.drainWindow" .Values.config.drainWindow)) (include "gleepost-gateway.exitWaitSeconds" .) (int .Values.gracePeriodMarginSeconds) $min) }}
{{- end }}
{{- $set }}
{{- end }}
{{- end }}

{{/* Cross-value checks that JSON schema cannot express. */}}
{{- define "gleepost-gateway.validate" -}}
{{- $s := .Values.secrets }}
{{- $embedded := "The embedded broker is single-node: set secrets.redisUrl (a Redis server), secrets.redisClusterUrls (a Redis Cluster's seed URLs) or secrets.redisSentinelUrls (Redis Sentinel, with config.redisSentinelMaster), or secrets.existingSecret with secrets.existingSecretRedisUrlKey, secrets.existingSecretRedisClusterUrlsKey or secrets.existingSecretRedisSentinelUrlsKey naming the key that holds it." }}
{{- $oneRedis := "configure exactly one Redis (a server's URL, a cluster's seed URLs or Sentinel URLs)" }}
{{- if and $s.existingSecret (or $s.jwtSecret $s.apiKey $s.redisUrl $s.redisClusterUrls $s.redisSentinelUrls $s.redisSentinelNodePassword) }}
{{- fail "secrets.existingSecret is set, so secrets.jwtSecret, secrets.apiKey, secrets.redisUrl, secrets.redisClusterUrls, secrets.redisSentinelUrls and secrets.redisSentinelNodePassword would be ignored: put them in the existing Secret and leave them empty" }}
{{- end }}
{{- /* Each Redis the values name: [value name, variable], chart values or existingSecret keys. */}}
{{- $redis := list }}
{{- $sources := list (list "redisUrl" "REDIS_URL") (list "redisClusterUrls" "REDIS_CLUSTER_URLS") (list "redisSentinelUrls" "REDIS_SENTINEL_URLS") }}
{{- if $s.existingSecret }}
{{- $sources = list (list "existingSecretRedisUrlKey" "REDIS_URL") (list "existingSecretRedisClusterUrlsKey" "REDIS_CLUSTER_URLS") (list "existingSecretRedisSentinelUrlsKey" "REDIS_SENTINEL_URLS") }}
{{- end }}
{{- range $src := $sources }}
{{- $k := index $src 0 }}
{{- with index $s $k }}
{{- $what := ternary (printf "secrets.%s (%q)" $k .) (printf "secrets.%s" $k) (not (empty $s.existingSecret)) }}
{{- $redis = append $redis (list $what (index $src 1)) }}
{{- end }}
{{- end }}
{{- if gt (len $redis) 1 }}
{{- $names := list }}{{- $vars := list }}
{{- range $redis }}{{ $names = append $names (index . 0) }}{{ $vars = append $vars (index . 1) }}{{ end }}
{{- $both := ternary "both" "all" (eq (len $redis) 2) }}
{{- $hint := ternary " For a cluster or Sentinel set secrets.existingSecretRedisUrlKey to \"\" (its default is redis-url)." "" (and (not (empty $s.existingSecret)) (not (empty $s.existingSecretRedisUrlKey))) }}
{{- fail (printf "%s are %s set: %s: the gateway refuses to start with %s.%s" (printf "%s and %s" (initial $names | join ", ") (last $names)) $both $oneRedis (printf "%s and %s" (initial $vars | join ", ") (last $vars)) $hint) }}
{{- end }}
{{- /* Sentinel: the master name is required; its settings mean nothing without it. */}}
{{- $c := .Values.config }}
{{- if eq (include "gleepost-gateway.redisEnv" .) "REDIS_SENTINEL_URLS" }}
{{- if not $c.redisSentinelMaster }}
{{- fail "Redis Sentinel is configured (REDIS_SENTINEL_URLS) but config.redisSentinelMaster is not set: name the master the sentinels monitor (the <name> of \"sentinel monitor <name> ...\", e.g. mymaster); the gateway refuses to start without REDIS_SENTINEL_MASTER" }}
{{- end }}
{{- if and $s.existingSecretRedisSentinelNodePasswordKey (not $s.existingSecret) }}
{{- fail "secrets.existingSecretRedisSentinelNodePasswordKey names a key of secrets.existingSecret, which is not set: use secrets.redisSentinelNodePassword, or set secrets.existingSecret" }}
{{- end }}
{{- else }}
{{- $set := list }}
{{- range $k := list "redisSentinelMaster" "redisSentinelNodeUsername" "redisSentinelNodeDb" }}
{{- if not (kindIs "invalid" (index $c $k)) }}{{ $set = append $set (printf "config.%s" $k) }}{{ end }}
{{- end }}
{{- range $k := list "redisSentinelNodePassword" "existingSecretRedisSentinelNodePasswordKey" }}
{{- if index $s $k }}{{ $set = append $set (printf "secrets.%s" $k) }}{{ end }}
{{- end }}
{{- with $set }}
{{- fail (printf "Sentinel settings without Sentinel: %s set, but neither secrets.redisSentinelUrls nor secrets.existingSecretRedisSentinelUrlsKey is; leave them null/empty (the gateway refuses to start with REDIS_SENTINEL_MASTER or REDIS_SENTINEL_NODE_* settings but no REDIS_SENTINEL_URLS)" (join ", " .)) }}
{{- end }}
{{- end }}
{{- if not (include "gleepost-gateway.hasRedis" .) }}
{{- if gt (int .Values.config.publishReplicas) 0 }}
{{- fail (printf "config.publishReplicas=%d needs a Redis broker with replicas (Redis WAIT); the embedded broker has none and would ignore it. %s" (int .Values.config.publishReplicas) $embedded) }}
{{- end }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount > 1 needs a Redis broker. %s" $embedded) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail (printf "autoscaling.enabled needs a Redis broker. %s" $embedded) }}
{{- end }}
{{- with .Values.strategy }}
{{- $surge := dig "rollingUpdate" "maxSurge" "25%" . | toString }}
{{- if and (ne (.type | default "RollingUpdate") "Recreate") (not (has $surge (list "0" "0%"))) }}
{{- fail (printf "strategy: a rolling update with maxSurge %s runs two embedded brokers at once (events lost between them): use strategy.type=Recreate, or rollingUpdate.maxSurge=0 with maxUnavailable=1, or leave strategy empty. %s" $surge $embedded) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $k, $_ := .Values.podLabels }}
{{- if hasKey (include "gleepost-gateway.selectorLabels" $ | fromYaml) $k }}
{{- fail (printf "podLabels must not set the selector label %s" $k) }}
{{- end }}
{{- end }}
{{- if .Values.podDisruptionBudget.enabled }}
{{- $min := .Values.podDisruptionBudget.minAvailable }}
{{- $max := .Values.podDisruptionBudget.maxUnavailable }}
{{- if and (kindIs "invalid" $min) (kindIs "invalid" $max) }}
{{- fail "podDisruptionBudget: set one of minAvailable or maxUnavailable" }}
{{- end }}
{{- if and (not (kindIs "invalid" $min)) (not (kindIs "invalid" $max)) }}
{{- fail "podDisruptionBudget: set only one of minAvailable or maxUnavailable (null the other)" }}
{{- end }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.connections.enabled) }}
{{- fail "autoscaling: enable at least one metric (targetCPUUtilizationPercentage or connections.enabled)" }}
{{- end }}
{{- if and .Values.autoscaling.connections.enabled (not .Values.autoscaling.connections.adapter) }}
{{- fail (printf "autoscaling.connections.enabled needs autoscaling.connections.adapter: name the custom metrics adapter that serves %s per pod (e.g. prometheus-adapter with the rule in docs/operations.md). Without one the HPA scales up on CPU but never down." .Values.autoscaling.connections.metricName) }}
{{- end }}
{{- end }}
{{- range $k := list "pingInterval" "pongTimeout" "preDrainDelay" "drainWindow" "redisTimeout" "probeInterval" "probeTimeout" }}
{{- with index $.Values.config $k }}
{{- $_ := include "gleepost-gateway.durationSeconds" (list (printf "config.%s" $k) .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Non-secret configuration: chart value key -> environment variable (the
ConfigMap's keys; null values are left out).
*/}}
{{- define "gleepost-gateway.configEnvNames" -}}
logFormat: GATEWAY_LOG_FORMAT
log: GATEWAY_LOG
pingInterval: GATEWAY_PING_INTERVAL
pongTimeout: GATEWAY_PONG_TIMEOUT
preDrainDelay: GATEWAY_PRE_DRAIN_DELAY
drainWindow: GATEWAY_DRAIN_WINDOW
maxEventBytes: GATEWAY_MAX_EVENT_BYTES
maxPublishUsers: GATEWAY_MAX_PUBLISH_USERS
queueEvents: GATEWAY_QUEUE_EVENTS
queueBytes: GATEWAY_QUEUE_BYTES
channels: GATEWAY_CHANNELS
tokenKey: GATEWAY_TOKEN_KEY
redisTimeout: GATEWAY_REDIS_TIMEOUT
probeInterval: GATEWAY_PROBE_INTERVAL
probeTimeout: GATEWAY_PROBE_TIMEOUT
historySize: GATEWAY_HISTORY_SIZE
historyTtl: GATEWAY_HISTORY_TTL
historyMaxBytes: GATEWAY_HISTORY_MAX_BYTES
maxReplay: GATEWAY_MAX_REPLAY
maxReplayBytes: GATEWAY_MAX_REPLAY_BYTES
workerThreads: GATEWAY_WORKER_THREADS
maxConnections: GATEWAY_MAX_CONNECTIONS
publishReplicas: GATEWAY_PUBLISH_REPLICAS
redisSentinelMaster: REDIS_SENTINEL_MASTER
redisSentinelNodeUsername: REDIS_SENTINEL_NODE_USERNAME
redisSentinelNodeDb: REDIS_SENTINEL_NODE_DB
adminMaxConnections: GATEWAY_ADMIN_MAX_CONNECTIONS
handshakeTimeout: GATEWAY_HANDSHAKE_TIMEOUT
maxPublishBody: GATEWAY_MAX_PUBLISH_BODY
maxClientFrame: GATEWAY_MAX_CLIENT_FRAME
clientFrameRate: GATEWAY_CLIENT_FRAME_RATE
maxConnectionsPerUser: GATEWAY_MAX_CONNECTIONS_PER_USER
maxConnectionsPerIp: GATEWAY_MAX_CONNECTIONS_PER_IP
connectRatePerIp: GATEWAY_CONNECT_RATE_PER_IP
authFailuresPerIp: GATEWAY_AUTH_FAILURES_PER_IP
trustedProxies: GATEWAY_TRUSTED_PROXIES
revocationTtl: GATEWAY_REVOCATION_TTL
jwksUrl: GATEWAY_JWKS_URL
jwksRefresh: GATEWAY_JWKS_REFRESH
jwtPublicKeyFile: GATEWAY_JWT_PUBLIC_KEY_FILE
jwtIssuer: GATEWAY_JWT_ISSUER
jwtAudience: GATEWAY_JWT_AUDIENCE
{{- end }}

{{/*
The ConfigMap's data (GATEWAY_* variables), also hashed into the pods'
checksum/config annotation.
*/}}
{{- define "gleepost-gateway.configData" -}}
GATEWAY_LISTEN: {{ printf "0.0.0.0:%d" (int .Values.containerPorts.ws) | quote }}
GATEWAY_ADMIN_LISTEN: {{ printf "0.0.0.0:%d" (int .Values.containerPorts.admin) | quote }}
{{- $names := include "gleepost-gateway.configEnvNames" . | fromYaml }}
{{- range $key := keys $names | sortAlpha }}
{{- $v := index $.Values.config $key }}
{{- if not (kindIs "invalid" $v) }}
{{ index $names $key }}: {{ include "gleepost-gateway.configValue" $v }}
{{- end }}
{{- end }}
{{- end }}

{{/* A config value as a ConfigMap string (integers without float formatting). */}}
{{- define "gleepost-gateway.configValue" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- int64 . | toString | quote }}
{{- else }}
{{- toString . | quote }}
{{- end }}
{{- end }}
