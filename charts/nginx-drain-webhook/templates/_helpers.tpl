{{- define "ndw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ndw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "ndw.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "ndw.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ndw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ndw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ndw.labels" -}}
{{ include "ndw.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ndw.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* The TLS pair and the caBundle, as a dict: given, reused from the
Secret (lookup), or made now (with the previous CA kept in the bundle). */}}
{{- define "ndw.tls" -}}
{{- $secret := printf "%s-tls" (include "ndw.fullname" .) -}}
{{- $service := include "ndw.fullname" . -}}
{{- if .Values.tls.cert -}}
{{- dict "cert" .Values.tls.cert "key" .Values.tls.key "ca" .Values.tls.caBundle "bundle" .Values.tls.caBundle | toJson -}}
{{- else -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace $secret -}}
{{- if and $old (not .Values.tls.rotate) -}}
{{- $ca := index $old.data "ca.crt" | b64dec -}}
{{- $prev := index $old.data "ca-previous.crt" | default "" | b64dec -}}
{{- dict "cert" (index $old.data "tls.crt" | b64dec) "key" (index $old.data "tls.key" | b64dec) "ca" $ca "previous" $prev "bundle" (printf "%s%s" $ca $prev) | toJson -}}
{{- else -}}
{{- $ca := genCA "nginx-drain-webhook-ca" 3650 -}}
{{- $names := list $service (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc" $service .Release.Namespace) (printf "%s.%s.svc.cluster.local" $service .Release.Namespace) -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $service .Release.Namespace) nil $names 3650 $ca -}}
{{- $prev := "" -}}
{{- if $old -}}{{- $prev = index $old.data "ca.crt" | b64dec -}}{{- end -}}
{{- dict "cert" $cert.Cert "key" $cert.Key "ca" $ca.Cert "previous" $prev "bundle" (printf "%s%s" $ca.Cert $prev) | toJson -}}
{{- end -}}
{{- end -}}
{{- end -}}
