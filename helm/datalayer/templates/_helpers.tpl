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
Where the chart mounts the Secrets it is given. Each has a directory of its
own beside /etc/datalayer, not under it: a mount inside the read-only
ConfigMap mount cannot create its mount point.
*/}}
{{- define "datalayer.secretsDir" -}}
/etc/datalayer-secrets
{{- end }}

{{/*
The file name of the keys file inside its mount: the Secret key itself when
it ends in an extension the service reads (it tells the format by the
extension), else the key with `.yaml` appended (JSON is YAML too).
*/}}
{{- define "datalayer.keysFileName" -}}
{{- $key := required "auth.existingSecretKey is required with auth.existingSecret" .Values.auth.existingSecretKey }}
{{- if regexMatch "\\.(ya?ml|json|toml)$" $key }}
{{- $key }}
{{- else }}
{{- printf "%s.yaml" $key }}
{{- end }}
{{- end }}

{{/*
The paths the mounted Secrets appear at in the container.
*/}}
{{- define "datalayer.keysFile" -}}
{{- printf "%s/auth/%s" (include "datalayer.secretsDir" .) (include "datalayer.keysFileName" .) }}
{{- end }}
{{- define "datalayer.tlsDir" -}}
{{- printf "%s/tls" (include "datalayer.secretsDir" .) }}
{{- end }}
{{- define "datalayer.clientCaFile" -}}
{{- if .Values.tls.clientCaSecret }}
{{- printf "%s/client-ca/ca.crt" (include "datalayer.secretsDir" .) }}
{{- else }}
{{- printf "%s/ca.crt" (include "datalayer.tlsDir" .) }}
{{- end }}
{{- end }}
{{- define "datalayer.metricsTokenFile" -}}
{{- printf "%s/metrics-token/token" (include "datalayer.secretsDir" .) }}
{{- end }}

{{/*
The Secret holding the /metrics bearer token; empty without one, or when
metrics are off.
*/}}
{{- define "datalayer.metricsTokenSecret" -}}
{{- if .Values.metrics.enabled }}{{ .Values.metrics.tokenSecret }}{{ end }}
{{- end }}

{{/*
True (non-empty) when the gRPC port serves TLS: a `tls.secretName`, or TLS
files set under `config.server.tls` by hand (mounted with extraVolumes).
Kubernetes' gRPC probes and `datalayer health` speak plaintext only, so the
probes change and the `helm test` pod is left out.
*/}}
{{- define "datalayer.tlsOn" -}}
{{- if or .Values.tls.secretName (dig "server" "tls" "cert_file" "" (.Values.config | default dict)) }}true{{ end }}
{{- end }}

{{/*
True (non-empty) when calls need a key: config.auth.required, which
defaults to true with auth.existingSecret.
*/}}
{{- define "datalayer.authRequired" -}}
{{- $auth := dig "auth" dict (.Values.config | default dict) }}
{{- if hasKey $auth "required" }}
{{- if $auth.required }}true{{ end }}
{{- else if .Values.auth.existingSecret }}true{{ end }}
{{- end }}

{{/*
True (non-empty) when the `helm test` pod is rendered: tests.enabled, and a
plaintext gRPC port (`datalayer health` cannot speak TLS).
*/}}
{{- define "datalayer.testsOn" -}}
{{- if and .Values.tests.enabled (not (include "datalayer.tlsOn" .)) }}true{{ end }}
{{- end }}

{{/*
Fails when calls need a key but config.auth.open leaves
grpc.health.v1.Health/Check out: the kubelet's gRPC probes and the `helm
test` pod send none. The patterns match as the service matches them
(src/access.rs): `*` is any run of characters, `read` every read (health is
one), `read:<pattern>` the reads of the services matching it.
*/}}
{{- define "datalayer.checkHealthOpen" -}}
{{- $auth := dig "auth" dict (.Values.config | default dict) }}
{{- if and (include "datalayer.authRequired" .) (hasKey $auth "open") (not (include "datalayer.tlsOn" .)) }}
{{- $open := false }}
{{- range $auth.open }}
{{- $target := "grpc.health.v1.Health/Check" }}
{{- $pattern := . }}
{{- if hasPrefix "read:" . }}
{{- $target = "grpc.health.v1.Health" }}
{{- $pattern = trimPrefix "read:" . }}
{{- end }}
{{- if or (eq . "read") (regexMatch (printf "^%s$" (regexQuoteMeta $pattern | replace "\\*" ".*")) $target) }}
{{- $open = true }}
{{- end }}
{{- end }}
{{- if not $open }}
{{- fail "config.auth.open must keep grpc.health.v1.Health/Check open (e.g. \"grpc.health.v1.Health/*\", its default): the kubelet's gRPC probes and the helm test pod call it without an API key" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The service's configuration file: the free-form `config` values with the keys
the chart owns laid over them (listen addresses that must match the container
ports and probes, the Redis mode, metrics, and the paths of the Secrets it
mounts). The Redis URL never goes here: it comes from a Secret through
DATALAYER__REDIS__URL.
*/}}
{{- define "datalayer.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- if and (hasKey $config "redis") (kindIs "map" $config.redis) (hasKey $config.redis "url") }}
{{- fail "config.redis.url: do not put the Redis URL in the ConfigMap; set redis.url or redis.existingSecret" }}
{{- end }}
{{- if and (eq .Values.redis.mode "cluster") (not (include "datalayer.redisSecretName" .)) }}
{{- fail "redis.mode=cluster needs the seed URLs: set redis.url or redis.existingSecret" }}
{{- end }}
{{- include "datalayer.checkHealthOpen" . }}
{{- $derived := dict
  "server" (dict "addr" (printf "0.0.0.0:%d" (int .Values.containerPorts.grpc)))
  "redis" (dict "mode" .Values.redis.mode)
  "metrics" (dict
    "enabled" .Values.metrics.enabled
    "addr" (printf "0.0.0.0:%d" (int .Values.containerPorts.metrics)))
}}
{{- with .Values.auth.existingSecret }}
{{- if dig "auth" "keys_file" "" $config }}
{{- fail "config.auth.keys_file: the chart sets it from auth.existingSecret; set one of them" }}
{{- end }}
{{- $auth := dict "keys_file" (include "datalayer.keysFile" $) }}
{{- if not (hasKey (dig "auth" dict $config) "required") }}
{{- $_ := set $auth "required" true }}
{{- end }}
{{- $_ := set $derived "auth" $auth }}
{{- end }}
{{- if .Values.tls.secretName }}
{{- range $key := list "cert_file" "key_file" }}
{{- if dig "server" "tls" $key "" $config }}
{{- fail (printf "config.server.tls.%s: the chart sets it from tls.secretName; set one of them" $key) }}
{{- end }}
{{- end }}
{{- $tls := dict
  "cert_file" (printf "%s/tls.crt" (include "datalayer.tlsDir" .))
  "key_file" (printf "%s/tls.key" (include "datalayer.tlsDir" .)) }}
{{- if .Values.tls.clientCa }}
{{- if dig "server" "tls" "client_ca_file" "" $config }}
{{- fail "config.server.tls.client_ca_file: the chart sets it from tls.clientCa; set one of them" }}
{{- end }}
{{- $_ := set $tls "client_ca_file" (include "datalayer.clientCaFile" .) }}
{{- end }}
{{- $_ := set $derived.server "tls" $tls }}
{{- else if or .Values.tls.clientCa .Values.tls.clientCaSecret }}
{{- fail "tls.clientCa and tls.clientCaSecret need tls.secretName: client certificates are verified only on a TLS port" }}
{{- end }}
{{- if and .Values.tls.clientCaSecret (not .Values.tls.clientCa) }}
{{- fail "tls.clientCaSecret is used only with tls.clientCa: true" }}
{{- end }}
{{- with include "datalayer.metricsTokenSecret" . }}
{{- if dig "metrics" "bearer_token_file" "" $config }}
{{- fail "config.metrics.bearer_token_file: the chart sets it from metrics.tokenSecret; set one of them" }}
{{- end }}
{{- $_ := set $derived.metrics "bearer_token_file" (include "datalayer.metricsTokenFile" $) }}
{{- end }}
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

{{/*
How a probe asks: Kubernetes' native gRPC probe on the health service
`.service` (it sends no API key: grpc.health.v1.Health is in auth.open), or,
on a TLS port, a TCP connect, since neither the native probe nor
`datalayer health` can speak TLS. Takes (dict "root" $ "service" <name>).
*/}}
{{- define "datalayer.probeHandler" -}}
{{- $v := .root.Values }}
{{- if and (include "datalayer.tlsOn" .root) $v.tls.secretName $v.tls.healthProbes -}}
{{- $dir := include "datalayer.tlsDir" .root }}
exec:
  command:
    - /usr/local/bin/datalayer
    - health
    - --addr
    - {{ printf "https://127.0.0.1:%v" $v.containerPorts.grpc | quote }}
    - --service
    - {{ .service | quote }}
    - --ca-file
    - {{ printf "%s/ca.crt" $dir | quote }}
    - --server-name
    - {{ $v.tls.probeServerName | default (printf "%s.%s.svc" (include "datalayer.fullname" .root) .root.Release.Namespace) | quote }}
    {{- if and $v.tls.clientCa (dig "server" "tls" "require_client_cert" false ($v.config | default dict)) }}
    - --cert
    - {{ printf "%s/tls.crt" $dir | quote }}
    - --key
    - {{ printf "%s/tls.key" $dir | quote }}
    {{- end }}
{{- else if include "datalayer.tlsOn" .root -}}
tcpSocket:
  port: {{ .root.Values.containerPorts.grpc }}
{{- else -}}
grpc:
  port: {{ .root.Values.containerPorts.grpc }}
  service: {{ .service | quote }}
{{- end }}
{{- end }}
