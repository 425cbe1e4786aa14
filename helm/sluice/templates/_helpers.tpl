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

{{/*
The configuration file: the config values, plus the admin listener when the admin API is enabled:
on loopback, unless admin.service.enabled puts it on every pod address behind its own Service.
*/}}
{{- define "sluice.config" -}}
{{- $config := deepCopy .Values.config }}
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
