{{/* The chart's name, at most 63 characters (a DNS label). */}}
{{- define "caddy-cx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's objects are named after the release, once. */}}
{{- define "caddy-cx.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "caddy-cx.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "caddy-cx.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "caddy-cx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "caddy-cx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "caddy-cx.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "caddy-cx.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "caddy-cx.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if eq $tag "latest" }}
{{- fail "image.tag latest: pin a version (or image.digest), so that every gateway runs the same build" }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Secret with the gateway's NATS password (key: password). */}}
{{- define "caddy-cx.natsSecret" -}}
{{- if .Values.nats.existingSecret }}
{{- .Values.nats.existingSecret }}
{{- else if .Values.nats.password }}
{{- printf "%s-nats" (include "caddy-cx.fullname" .) }}
{{- else }}
{{- fail "nats.existingSecret (a Secret with key password) or nats.password: the gateway's NATS user needs its password; the gateway never connects without one" }}
{{- end }}
{{- end }}

{{/* The Secret with the status page's bcrypt hash (key: hash). */}}
{{- define "caddy-cx.statusSecret" -}}
{{- if .Values.status.existingSecret }}
{{- .Values.status.existingSecret }}
{{- else if .Values.status.passwordHash }}
{{- printf "%s-status" (include "caddy-cx.fullname" .) }}
{{- else }}
{{- fail "status.existingSecret (a Secret with key hash) or status.passwordHash (caddy-cx hash-password): the status page is served only behind a password" }}
{{- end }}
{{- end }}

{{/* The Caddyfile the chart writes from the values. */}}
{{- define "caddy-cx.caddyfile" -}}
# Written by the caddy-cx Helm chart from its values. Secrets are {env.*}
# placeholders, read when the config starts: GET /config/ never shows them.
{
	# The admin API stays inside the pod (the readiness probe asks it): it
	# can rewrite the config.
	admin localhost:2019
	cx {
		nats{{ range .Values.nats.urls }} {{ . }}{{ end }}
		user {{ .Values.nats.user }} {env.CX_GATEWAY_PASSWORD}
	}
}

:{{ .Values.ports.http }} {
	basic_auth {{ .Values.status.path }}* {
		{{ .Values.status.user }} {env.CX_HA_PASSWORD_HASH}
	}
	cx_status {{ .Values.status.path }}

	cx_proxy {
		subject_prefix {{ .Values.cx.subjectPrefix }}
		{{- with .Values.cx.allowNetworks }}
		allow_networks {{ join " " . }}
		{{- end }}
		{{- with .Values.cx.allowIds }}
		allow_ids {{ join " " . }}
		{{- end }}
		{{- range $id, $p := .Values.cx.priorities }}
		priority {{ $id }} {{ $p }}
		{{- end }}
		{{- with .Values.cx.extraProxyConfig }}
		{{ . | nindent 8 | trim }}
		{{- end }}
	}
}

# Prometheus scrapes /metrics; the liveness probe asks /healthz.
:{{ .Values.ports.metrics }} {
	handle /metrics {
		metrics
	}
	handle /healthz {
		respond "ok" 200
	}
	handle {
		respond 404
	}
}
{{- end }}
