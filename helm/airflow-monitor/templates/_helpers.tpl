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
{{- if .Values.bridge.mapping }}
{{- $_ := set $bridge "mapping_file" "/etc/airflow-monitor/mapping.yaml" }}
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
{{- include "airflow-monitor.secretEnv" (dict "env" "DD_API_KEY" "ref" .Values.secrets.datadogApiKey) }}
{{- include "airflow-monitor.secretEnv" (dict "env" "AIRFLOW_MONITOR_WEBHOOK_URL" "ref" .Values.secrets.webhookUrl) }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
