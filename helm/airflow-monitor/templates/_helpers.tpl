{{- define "airflow-monitor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "airflow-monitor.fullname" -}}
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

{{- define "airflow-monitor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "airflow-monitor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "airflow-monitor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "airflow-monitor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "airflow-monitor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "airflow-monitor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The config file: the bridge section, and the SLA watcher's sections when enabled. */}}
{{- define "airflow-monitor.config" -}}
{{- $bridge := deepCopy .Values.bridge.config }}
{{- $_ := set $bridge "statsd_udp" (printf ":%d" (int .Values.service.statsdPort)) }}
{{- $_ := set $bridge "statsd_tcp" (printf ":%d" (int .Values.service.statsdPort)) }}
{{- $_ := set $bridge "web_listen" (printf ":%d" (int .Values.service.metricsPort)) }}
{{- $_ := set $bridge "otlp_listen" (ternary (printf ":%d" (int .Values.service.otlpPort)) "" (gt (int .Values.service.otlpPort) 0)) }}
{{- if .Values.bridge.mapping }}
{{- $_ := set $bridge "mapping_file" "/etc/airflow-monitor/mapping.yaml" }}
{{- end }}
{{- if include "airflow-monitor.webConfigured" . }}
{{- $_ := set $bridge "web_config_file" "/etc/airflow-monitor/web/web-config.yml" }}
{{- end }}
{{- $doc := dict "bridge" $bridge }}
{{- if .Values.sla.enabled }}
{{- $doc = merge $doc (deepCopy .Values.sla.config) }}
{{- $watcher := default (dict) (get $doc "watcher") }}
{{- $_ := set $watcher "state_file" "/var/lib/airflow-monitor/sla.sqlite" }}
{{- $_ := set $doc "watcher" $watcher }}
{{- end }}
{{- toYaml $doc }}
{{- end }}

{{/* An env var from a referenced Secret; nothing when the reference has no name. */}}
{{- define "airflow-monitor.secretEnv" -}}
{{- if .ref.name }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.name }}
      key: {{ .ref.key }}
{{- end }}
{{- end }}

{{/* The container's environment: Datadog agent address, secrets, extraEnv. */}}
{{- define "airflow-monitor.env" -}}
{{- if and (eq (toString .Values.bridge.config.datadog) "agent") (not .Values.bridge.config.datadog_host) }}
- name: AIRFLOW_MONITOR_DATADOG_HOST
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}
{{- include "airflow-monitor.secretEnv" (dict "env" "AIRFLOW_MONITOR_AIRFLOW_PASSWORD" "ref" .Values.secrets.airflowPassword) }}
{{- include "airflow-monitor.secretEnv" (dict "env" "AIRFLOW_MONITOR_AIRFLOW_TOKEN" "ref" .Values.secrets.airflowToken) }}
{{- include "airflow-monitor.secretEnv" (dict "env" "AIRFLOW_MONITOR_OPSGENIE_API_KEY" "ref" .Values.secrets.opsgenieApiKey) }}
{{- include "airflow-monitor.secretEnv" (dict "env" "AIRFLOW_MONITOR_JSM_API_TOKEN" "ref" .Values.secrets.jsmApiToken) }}
{{- include "airflow-monitor.secretEnv" (dict "env" "DD_API_KEY" "ref" .Values.secrets.datadogApiKey) }}
{{- include "airflow-monitor.secretEnv" (dict "env" "AIRFLOW_MONITOR_WEBHOOK_URL" "ref" .Values.secrets.webhookUrl) }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The healer's config file: heal.config with the namespace and the Lease name set by the chart (its
state lives in the ConfigMap <lease>-state, beside the Lease). */}}
{{- define "airflow-monitor.healConfig" -}}
{{- $doc := deepCopy .Values.heal.config }}
{{- $_ := set $doc "kubernetes" (dict "namespace" (include "airflow-monitor.healNamespace" .)) }}
{{- $healer := default (dict) (get $doc "healer") }}
{{- $_ := set $healer "metrics_listen" ":9104" }}
{{- $_ := set $doc "healer" $healer }}
{{- $lease := default (dict) (get $doc "lease") }}
{{- $_ := set $lease "name" (include "airflow-monitor.healLease" .) }}
{{- $_ := set $doc "lease" $lease }}
{{- toYaml $doc }}
{{- end }}

{{/* The healer's Lease: one per Airflow release (two healers of two releases never share one). */}}
{{- define "airflow-monitor.healLease" -}}
{{- dig "lease" "name" (printf "airflow-monitor-heal-%s" (dig "airflow" "release" "airflow" .Values.heal.config)) .Values.heal.config }}
{{- end }}

{{/* The healer's ServiceAccount: always its own (never the namespace's default), the only one with a token. */}}
{{- define "airflow-monitor.healServiceAccount" -}}
{{- printf "%s-heal" (include "airflow-monitor.fullname" .) }}
{{- end }}

{{/* The healer's pods: a name of their own, so the bridge's Service (statsd) never selects them. */}}
{{- define "airflow-monitor.healSelectorLabels" -}}
app.kubernetes.io/name: {{ include "airflow-monitor.name" . }}-heal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: healer
{{- end }}

{{- define "airflow-monitor.healNamespace" -}}
{{- default .Release.Namespace .Values.heal.namespace }}
{{- end }}

{{/* Non-empty when TLS or basic auth is set for the HTTP endpoints. */}}
{{- define "airflow-monitor.webConfigured" -}}
{{- if or .Values.web.tls.secretName .Values.web.basicAuthUsers }}yes{{ end }}
{{- end }}

{{/* The exporter-toolkit web config file (--web-config-file), paths as mounted by the Deployment. */}}
{{- define "airflow-monitor.webConfig" -}}
{{- $doc := dict }}
{{- with .Values.web.tls.secretName }}
{{- $tls := dict "cert_file" "/etc/airflow-monitor/tls/tls.crt" "key_file" "/etc/airflow-monitor/tls/tls.key" "min_version" $.Values.web.tls.minVersion }}
{{- if $.Values.web.tls.clientCA.secretName }}
{{- $_ := set $tls "client_auth_type" "RequireAndVerifyClientCert" }}
{{- $_ := set $tls "client_ca_file" (printf "/etc/airflow-monitor/client-ca/%s" $.Values.web.tls.clientCA.key) }}
{{- end }}
{{- $_ := set $doc "tls_server_config" $tls }}
{{- end }}
{{- with .Values.web.basicAuthUsers }}
{{- $_ := set $doc "basic_auth_users" . }}
{{- end }}
{{- toYaml $doc }}
{{- end }}
