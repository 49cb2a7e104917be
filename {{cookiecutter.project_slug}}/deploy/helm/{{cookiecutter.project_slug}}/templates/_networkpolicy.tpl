{{/*
Network policies: default-deny.yaml shuts every pod of the release off, then each
component's networkpolicy.yaml opens exactly its own flows with these pieces.
*/}}

{{/* A peer selecting one component's pods. Call with (dict "ctx" $ "component" NAME). */}}
{{- define "chart.peer" -}}
- podSelector:
    matchLabels:
      {{- include "chart.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/*
The label marking a pod as a client of Redis or of the database: the server's policy
admits exactly the pods that carry it. Call with (dict "ctx" $ "of" "redis"|"database").
*/}}
{{- define "chart.clientLabel" -}}
{{ include "chart.name" .ctx }}/{{ .of }}-client: "true"
{{- end -}}

{{- define "chart.clientPeer" -}}
- podSelector:
    matchLabels:
      {{- include "chart.releaseSelector" .ctx | nindent 6 }}
      {{- include "chart.clientLabel" . | nindent 6 }}
{{- end -}}

{{/* Egress rules of a pod. Call with (dict "ctx" $ "redis" BOOL "database" BOOL "extra" BOOL). */}}
{{- define "chart.egressRules" -}}
{{- $values := .ctx.Values -}}
# Name resolution of the Services below.
- to:
    {{- toYaml $values.networkPolicies.dns | nindent 4 }}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- if .redis }}
# Redis and its sentinels (broker, result backend).
- ports:
    {{- if $values.redis.enabled }}
    - {port: 6379, protocol: TCP}
    - {port: 26379, protocol: TCP}
  to:
    {{- include "chart.peer" (dict "ctx" .ctx "component" "redis") | nindent 4 }}
    {{- else }}
    - {port: {{ $values.redis.external.redisPort }}, protocol: TCP}
    - {port: {{ $values.redis.external.sentinelPort }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- if .database }}
# The ledger database.
- ports:
    - {port: {{ include "chart.databasePort" .ctx }}, protocol: TCP}
  {{- if $values.database.internal.enabled }}
  to:
    {{- include "chart.peer" (dict "ctx" .ctx "component" "database") | nindent 4 }}
  {{- end }}
{{- end }}
{{- if .extra }}
{{- with $values.networkPolicies.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
One component's policy. Call with (dict "ctx" $ "component" NAME "ingress" YAML "egress" YAML),
YAML being rendered rule lists ("" = none allowed).
*/}}
{{- define "chart.networkPolicy" -}}
{{- if .ctx.Values.networkPolicies.enabled }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "chart.fullname" .ctx }}-{{ .component }}
  labels:
    {{- include "chart.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "chart.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress, Egress]
  {{- if trim .ingress }}
  ingress:
    {{- .ingress | nindent 4 }}
  {{- else }}
  ingress: []
  {{- end }}
  {{- if trim .egress }}
  egress:
    {{- .egress | nindent 4 }}
  {{- else }}
  egress: []
  {{- end }}
{{- end }}
{{- end -}}

{{/* An ingress rule on PORT from PEERS (empty: from anywhere). Call with (dict "port" P "from" PEERS). */}}
{{- define "chart.ingressRule" -}}
- ports:
    - {port: {{ .port }}, protocol: TCP}
  {{- with .from }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Client labels of a pod template. Call with (dict "ctx" $ "of" (list "redis" "database")). */}}
{{- define "chart.clientLabels" -}}
{{- $lines := list -}}
{{- range .of -}}
{{- $lines = append $lines (include "chart.clientLabel" (dict "ctx" $.ctx "of" .)) -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}
