{{/* Names and labels shared by the chart's objects. */}}
{{- define "nodemedic.labels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "nodemedic.labels.shared" . }}
{{- end }}

{{- /* For objects that add a selector (which carries the instance label) to their labels: a key
       given twice is invalid YAML to strict readers. */}}
{{- define "nodemedic.labels.shared" -}}
app.kubernetes.io/part-of: nodemedic
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "nodemedic.controller.name" -}}{{ .Release.Name }}-controller{{- end }}
{{- define "nodemedic.agent.name" -}}{{ .Release.Name }}-agent{{- end }}
{{- define "nodemedic.api.name" -}}{{ .Release.Name }}-api{{- end }}

{{- define "nodemedic.controller.selector" -}}
app.kubernetes.io/name: nodemedic-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nodemedic.agent.selector" -}}
app.kubernetes.io/name: nodemedic-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nodemedic.image" -}}
{{ .image.repository }}:{{ default .chart.AppVersion .image.tag }}
{{- end }}

{{- define "nodemedic.api.tlsSecret" -}}
{{ default (printf "%s-api-tls" .Release.Name) .Values.api.tls.secretName }}
{{- end }}
