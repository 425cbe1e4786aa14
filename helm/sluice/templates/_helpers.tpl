{{/* Chart name, truncated to 63 characters. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already holds the chart name. */}}
{{- define "sluice.fullname" -}}
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

{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sluice.labels" -}}
helm.sh/chart: {{ include "sluice.chart" . }}
{{ include "sluice.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The admin Service's name: the full name, shortened to leave room for "-admin". */}}
{{- define "sluice.adminServiceName" -}}
{{- printf "%s-admin" (include "sluice.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* The ConfigMap made from envoy.domains: the full name, shortened to leave room for "-envoy-domains". */}}
{{- define "sluice.envoyDomainsName" -}}
{{- printf "%s-envoy-domains" (include "sluice.fullname" . | trunc 49 | trimSuffix "-") }}
{{- end }}

{{/* The ConfigMap whose keys are the Envoy domain files (envoy.existingConfigMap, else the one made
from envoy.domains), or nothing when there are none. */}}
{{- define "sluice.envoyDomainsConfigMap" -}}
{{- if .Values.envoy.existingConfigMap }}
{{- .Values.envoy.existingConfigMap }}
{{- else if .Values.envoy.domains }}
{{- include "sluice.envoyDomainsName" . }}
{{- end }}
{{- end }}

{{/* Where the domain files are mounted: a volume of its own, beside (not inside) /etc/sluice. */}}
{{- define "sluice.envoyDomainsDir" -}}
/etc/sluice-domains
{{- end }}

{{/* What a change does to the pods: reload (Sluice reads the mounted files again) or roll (a checksum
annotation makes new pods). */}}
{{- define "sluice.configOnChange" -}}
{{- default "roll" .Values.config.onChange }}
{{- end }}
{{- define "sluice.envoyOnChange" -}}
{{- default "reload" .Values.envoy.onChange }}
{{- end }}

{{/*
The pod annotations: a checksum of each configuration set to roll, then podAnnotations. The checksum
of an existing ConfigMap is read from the cluster (lookup), so it is empty under `helm template`.
*/}}
{{- define "sluice.podAnnotations" -}}
{{- $annotations := dict }}
{{- if eq (include "sluice.configOnChange" .) "roll" }}
{{- $_ := set $annotations "checksum/config" (include (print .Template.BasePath "/configmap.yaml") . | sha256sum) }}
{{- end }}
{{- if eq (include "sluice.envoyOnChange" .) "roll" }}
{{- if .Values.envoy.existingConfigMap }}
{{- $existing := lookup "v1" "ConfigMap" .Release.Namespace .Values.envoy.existingConfigMap }}
{{- $_ := set $annotations "checksum/envoy-domains" (get (default dict $existing) "data" | toJson | sha256sum) }}
{{- else if .Values.envoy.domains }}
{{- $_ := set $annotations "checksum/envoy-domains" (include (print .Template.BasePath "/envoy-domains.yaml") . | sha256sum) }}
{{- end }}
{{- end }}
{{- toYaml (merge $annotations (default dict .Values.podAnnotations)) }}
{{- end }}

{{/*
The configuration file: the config values (less the chart's own config.onChange), plus the admin
listener when the admin API is enabled: on loopback, unless admin.service.enabled puts it on every pod
address behind its own Service; plus the domain files' directory in envoy.paths.
*/}}
{{- define "sluice.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $_ := unset $config "onChange" }}
{{- if include "sluice.envoyDomainsConfigMap" . }}
{{- $envoy := default dict (get $config "envoy") }}
{{- $paths := default (list) (get $envoy "paths") }}
{{- $_ := set $envoy "paths" (append $paths (include "sluice.envoyDomainsDir" .) | uniq) }}
{{- $_ := set $config "envoy" $envoy }}
{{- end }}
{{- if .Values.admin.enabled }}
{{- $host := ternary "0.0.0.0" "127.0.0.1" .Values.admin.service.enabled }}
{{- $admin := dict "grpc_addr" (printf "%s:%d" $host (int .Values.admin.port)) }}
{{- $_ := set $config "admin" (merge (default dict (get $config "admin")) $admin) }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $tls := dict "cert_file" (printf "/etc/sluice/tls/%s" .Values.tls.certKey) "key_file" (printf "/etc/sluice/tls/%s" .Values.tls.keyKey) }}
{{- if .Values.tls.clientCaKey }}
{{- $_ := set $tls "client_ca_file" (printf "/etc/sluice/tls/%s" .Values.tls.clientCaKey) }}
{{- end }}
{{- $server := merge (dict "tls" $tls) (default dict (get $config "server")) }}
{{- $_ := set $config "server" $server }}
{{- end }}
{{- with .Values.redis.tls }}
{{- if .secretName }}
{{- $redisTls := dict }}
{{- if .caKey }}{{- $_ := set $redisTls "ca_file" (printf "/etc/sluice/redis-tls/%s" .caKey) }}{{- end }}
{{- if .certKey }}{{- $_ := set $redisTls "cert_file" (printf "/etc/sluice/redis-tls/%s" .certKey) }}{{- end }}
{{- if .keyKey }}{{- $_ := set $redisTls "key_file" (printf "/etc/sluice/redis-tls/%s" .keyKey) }}{{- end }}
{{- $redis := merge (dict "tls" $redisTls) (default dict (get $config "redis")) }}
{{- $_ := set $config "redis" $redis }}
{{- end }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
Seconds Kubernetes waits after SIGTERM: as given, or the drain, the grace for calls in flight and 5
more; never less than the first two.
*/}}
{{- define "sluice.terminationGracePeriod" -}}
{{- $server := .Values.config.server | default dict -}}
{{- $needed := add (int (dig "drain_secs" 5 $server)) (int (dig "shutdown_grace_secs" 10 $server)) -}}
{{- $given := .Values.terminationGracePeriodSeconds -}}
{{- if eq (toString $given) "" -}}
{{- add $needed 5 -}}
{{- else if lt (int $given) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds: %v is less than config.server.drain_secs + shutdown_grace_secs (%d): pods would be killed before they drain" $given $needed) -}}
{{- else -}}
{{- $given -}}
{{- end -}}
{{- end }}

{{/*
The ports Sluice listens on, from config.server.grpc_addr and http_addr (host:port).
*/}}
{{- define "sluice.grpcPort" -}}
{{- include "sluice.portOf" (dict "key" "config.server.grpc_addr" "addr" (dig "grpc_addr" "0.0.0.0:8081" (.Values.config.server | default dict))) -}}
{{- end }}
{{- define "sluice.httpPort" -}}
{{- include "sluice.portOf" (dict "key" "config.server.http_addr" "addr" (dig "http_addr" "0.0.0.0:9090" (.Values.config.server | default dict))) -}}
{{- end }}
{{- define "sluice.portOf" -}}
{{- $port := regexFind "[0-9]+$" (toString .addr) -}}
{{- if not (regexMatch ":[0-9]+$" (toString .addr)) -}}
{{- fail (printf "%s: %q is not host:port" .key .addr) -}}
{{- end -}}
{{- $port -}}
{{- end }}
