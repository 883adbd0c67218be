{{/* Name of the chart, or nameOverride. */}}
{{- define "flotilla.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the release's objects: the release name, suffixed with the chart's unless it holds it. */}}
{{- define "flotilla.fullname" -}}
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

{{- define "flotilla.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of the control plane's pods, which never change for a release (a Deployment's selector cannot). */}}
{{- define "flotilla.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end }}

{{- define "flotilla.labels" -}}
helm.sh/chart: {{ include "flotilla.chart" . }}
{{ include "flotilla.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flotilla
{{- end }}

{{- define "flotilla.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flotilla.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flotilla.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when the control plane runs on PostgreSQL, "" on embedded SQLite. */}}
{{- define "flotilla.postgres" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{/* The Secret the chart creates from values, "" when it creates none. */}}
{{- define "flotilla.chartSecret" -}}
{{- if or .Values.database.url .Values.masterKey.value .Values.bootstrapAdminKey.value }}
{{- include "flotilla.fullname" . }}
{{- end }}
{{- end }}

{{- define "flotilla.controlPlaneUrl" -}}
{{- default (printf "http://%s.%s.svc:%d" (include "flotilla.fullname" .) .Release.Namespace (int .Values.service.port)) .Values.agents.controlPlaneUrl }}
{{- end }}

{{/* The [[pools]] of flotilla.toml: each pool with the chart's defaults for the kubernetes provisioner. */}}
{{- define "flotilla.pools" -}}
{{- $pools := list }}
{{- range .Values.pools }}
{{- $k8s := merge (deepCopy (default dict .kubernetes)) (dict
      "image" (default (include "flotilla.image" $) $.Values.agents.image)
      "namespace" $.Release.Namespace
      "control_plane_url" (include "flotilla.controlPlaneUrl" $)
      "key_secret" $.Values.agents.keySecret) }}
{{- $pool := merge (dict "kubernetes" $k8s) (omit . "kubernetes") (dict "provisioner" "kubernetes") }}
{{- if ne $pool.provisioner "kubernetes" }}
{{- $pool = omit $pool "kubernetes" }}
{{- end }}
{{- $pools = append $pools $pool }}
{{- end }}
{{- toJson (dict "pools" $pools) }}
{{- end }}

{{/*
TOML from a map. Helm reads every number in values as a float and its toToml writes 4 as 4.0,
which Flotilla's integer settings refuse; this writes whole numbers as integers. Scalars and
arrays of scalars come first in each table, then sub-tables, then arrays of tables.
*/}}
{{- define "flotilla.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "flotilla.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) }}{{ $v }}
{{- else if kindIs "slice" $v }}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "flotilla.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" $v }}{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ include "flotilla.toml.key" $k }} = {{ include "flotilla.toml.value" (get $v $k) }}{{ end }} }
{{- else }}{{ fail (printf "flotilla.toml: cannot write %v (%s) as TOML" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{- define "flotilla.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}{{ if kindIs "map" (first .) }}true{{ end }}{{ end }}
{{- end }}

{{- define "flotilla.toml.table" -}}
{{- $path := .path }}
{{- $m := .map }}
{{- range $k := keys $m | sortAlpha }}
{{- $v := get $m $k }}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) (not (include "flotilla.toml.isTableArray" $v)) }}
{{ include "flotilla.toml.key" $k }} = {{ include "flotilla.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $m | sortAlpha }}
{{- $v := get $m $k }}
{{- $p := include "flotilla.toml.key" $k }}
{{- if $path }}{{ $p = printf "%s.%s" $path $p }}{{ end }}
{{- if kindIs "map" $v }}

[{{ $p }}]
{{- include "flotilla.toml.table" (dict "path" $p "map" $v) }}
{{- end }}
{{- end }}
{{- range $k := keys $m | sortAlpha }}
{{- $v := get $m $k }}
{{- $p := include "flotilla.toml.key" $k }}
{{- if $path }}{{ $p = printf "%s.%s" $path $p }}{{ end }}
{{- if include "flotilla.toml.isTableArray" $v }}
{{- range $e := $v }}

[[{{ $p }}]]
{{- include "flotilla.toml.table" (dict "path" $p "map" $e) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* flotilla.toml: config plus the pools. */}}
{{- define "flotilla.configToml" -}}
{{- $config := deepCopy .Values.config }}
{{- if hasKey $config "pools" }}
{{- fail "set pools in the top-level `pools:` value, not under config" }}
{{- end }}
{{- $_ := set $config "pools" (include "flotilla.pools" . | fromJson).pools }}
# flotilla.toml rendered by the Helm chart from .Values.config and .Values.pools.
{{- include "flotilla.toml.table" (dict "path" "" "map" $config) }}
{{- end }}
