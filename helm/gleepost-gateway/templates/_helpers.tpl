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

{{/* Name of the Secret holding jwt-secret, api-key and (optional) redis-url. */}}
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
True ("true") when a Redis URL is (or may be) configured: secrets.redisUrl set,
or an existingSecret (which may carry redis-url). Empty otherwise: embedded broker.
*/}}
{{- define "gleepost-gateway.hasRedis" -}}
{{- if or .Values.secrets.redisUrl .Values.secrets.existingSecret }}true{{- end }}
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
terminationGracePeriodSeconds: must exceed preDrainDelay + drainWindow so the
kubelet never SIGKILLs a node that is still draining. Computed from the values
(plus gracePeriodMarginSeconds) unless set explicitly, in which case it is checked.
*/}}
{{- define "gleepost-gateway.terminationGracePeriodSeconds" -}}
{{- $pre := include "gleepost-gateway.durationSeconds" (list "config.preDrainDelay" .Values.config.preDrainDelay) | atoi }}
{{- $drain := include "gleepost-gateway.durationSeconds" (list "config.drainWindow" .Values.config.drainWindow) | atoi }}
{{- $min := add $pre $drain }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $min (int .Values.gracePeriodMarginSeconds) }}
{{- else }}
{{- $set := int .Values.terminationGracePeriodSeconds }}
{{- if le $set $min }}
{{- fail (printf "terminationGracePeriodSeconds=%d must be greater than config.preDrainDelay + config.drainWindow = %d seconds (leave it null to compute it)" $set $min) }}
{{- end }}
{{- $set }}
{{- end }}
{{- end }}

{{/* Cross-value checks that JSON schema cannot express. */}}
{{- define "gleepost-gateway.validate" -}}
{{- if not (include "gleepost-gateway.hasRedis" .) }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail "replicaCount > 1 needs a Redis broker: set secrets.redisUrl or secrets.existingSecret (with a redis-url key). The embedded broker is single-node." }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs a Redis broker: set secrets.redisUrl or secrets.existingSecret (with a redis-url key). The embedded broker is single-node." }}
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
{{- end }}
{{- range $k := list "pingInterval" "pongTimeout" "preDrainDelay" "drainWindow" "redisTimeout" "probeInterval" "probeTimeout" }}
{{- with index $.Values.config $k }}
{{- $_ := include "gleepost-gateway.durationSeconds" (list (printf "config.%s" $k) .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Non-secret configuration: chart value key -> environment variable.
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
maxReplay: GATEWAY_MAX_REPLAY
workerThreads: GATEWAY_WORKER_THREADS
maxConnections: GATEWAY_MAX_CONNECTIONS
{{- end }}

{{/* A config value as a ConfigMap string (integers without float formatting). */}}
{{- define "gleepost-gateway.configValue" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- int64 . | toString | quote }}
{{- else }}
{{- toString . | quote }}
{{- end }}
{{- end }}
