{{/*
The chart name, or nameOverride.
*/}}
{{- define "datalayer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A fully qualified app name: <release>-<chart> unless the release name already
contains the chart name. Truncated to 63 characters (DNS label limit).
*/}}
{{- define "datalayer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "datalayer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object: the standard ones, then `commonLabels` (the schema
refuses commonLabels that would replace a standard one).
*/}}
{{- define "datalayer.labels" -}}
helm.sh/chart: {{ include "datalayer.chart" . }}
{{ include "datalayer.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: datalayer
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of the datalayer pods: `podLabels` and `commonLabels` under the
standard labels, which win, so the selector labels can never be replaced.
*/}}
{{- define "datalayer.podLabels" -}}
{{- $labels := merge (fromYaml (include "datalayer.labels" .)) (.Values.podLabels | default dict) }}
{{- toYaml $labels }}
{{- end }}

{{/*
Labels of the `helm test` pod: the standard labels without
app.kubernetes.io/name, so that neither the Service nor the
PodDisruptionBudget (which select on name and instance) ever pick it up.
*/}}
{{- define "datalayer.testLabels" -}}
{{- $labels := fromYaml (include "datalayer.labels" .) }}
{{- $_ := unset $labels "app.kubernetes.io/name" }}
{{- $_ := set $labels "app.kubernetes.io/component" "helm-test" }}
{{- toYaml $labels }}
{{- end }}

{{/*
Labels that select this release's pods (immutable on a Deployment: keep them
stable across upgrades).
*/}}
{{- define "datalayer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "datalayer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "datalayer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "datalayer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image: repository@digest, else repository:tag (tag defaulting
to the chart's appVersion).
*/}}
{{- define "datalayer.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
True (non-empty) when the chart itself creates the Secret holding the Redis URL.
*/}}
{{- define "datalayer.createRedisSecret" -}}
{{- if and .Values.redis.url (not .Values.redis.existingSecret) }}true{{ end }}
{{- end }}

{{/*
Name of the Secret holding the Redis URL; empty when Redis is not configured
(the pods then use the in-process memory store).
*/}}
{{- define "datalayer.redisSecretName" -}}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
{{- fail "redis: set either redis.url (the chart creates a Secret) or redis.existingSecret, not both" }}
{{- end }}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else if .Values.redis.url }}
{{- printf "%s-redis" (include "datalayer.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Key inside that Secret.
*/}}
{{- define "datalayer.redisSecretKey" -}}
{{- if .Values.redis.existingSecret }}
{{- required "redis.existingSecretKey is required with redis.existingSecret" .Values.redis.existingSecretKey }}
{{- else -}}
redis-url
{{- end }}
{{- end }}

{{/*
Where the ConfigMap is mounted and the file DATALAYER_CONFIG points at.
*/}}
{{- define "datalayer.configDir" -}}
/etc/datalayer
{{- end }}
{{- define "datalayer.configFile" -}}
config.yaml
{{- end }}

{{/*
The service's configuration file: the free-form `config` values with the keys
the chart owns laid over them (listen addresses that must match the container
ports and probes, the Redis mode, metrics). The Redis URL never goes here: it
comes from a Secret through DATALAYER__REDIS__URL.
*/}}
{{- define "datalayer.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- if and (hasKey $config "redis") (kindIs "map" $config.redis) (hasKey $config.redis "url") }}
{{- fail "config.redis.url: do not put the Redis URL in the ConfigMap; set redis.url or redis.existingSecret" }}
{{- end }}
{{- if and (eq .Values.redis.mode "cluster") (not (include "datalayer.redisSecretName" .)) }}
{{- fail "redis.mode=cluster needs the seed URLs: set redis.url or redis.existingSecret" }}
{{- end }}
{{- $derived := dict
  "server" (dict "addr" (printf "0.0.0.0:%d" (int .Values.containerPorts.grpc)))
  "redis" (dict "mode" .Values.redis.mode)
  "metrics" (dict
    "enabled" .Values.metrics.enabled
    "addr" (printf "0.0.0.0:%d" (int .Values.containerPorts.metrics)))
}}
{{- toYaml (mergeOverwrite $config $derived) }}
{{- end }}

{{/*
PromQL label matchers selecting this release's series in the PrometheusRule:
metrics.prometheusRule.selector, else the namespace and the job name
prometheus-operator gives the ServiceMonitor's targets (the Service's name).
*/}}
{{- define "datalayer.promSelector" -}}
{{- with .Values.metrics.prometheusRule.selector }}
{{- . }}
{{- else }}
{{- printf "namespace=%q, job=%q" .Release.Namespace (include "datalayer.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The `host:port` of the gRPC Service inside the cluster.
*/}}
{{- define "datalayer.grpcAddress" -}}
{{- printf "%s.%s.svc:%d" (include "datalayer.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}

{{/*
A NetworkPolicyPeer from {namespaceLabels, podLabels}: pods matching
podLabels (all when empty) in the namespaces matching namespaceLabels (the
release's own namespace when empty).
*/}}
{{- define "datalayer.networkPolicyPeer" -}}
{{- $peer := dict "podSelector" (dict) }}
{{- with .podLabels }}
{{- $_ := set $peer "podSelector" (dict "matchLabels" .) }}
{{- end }}
{{- with .namespaceLabels }}
{{- $_ := set $peer "namespaceSelector" (dict "matchLabels" .) }}
{{- end }}
{{- toYaml $peer }}
{{- end }}
