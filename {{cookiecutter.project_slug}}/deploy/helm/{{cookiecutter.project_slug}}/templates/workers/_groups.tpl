{{/*
Worker groups: each entry of workers.groups merged over workers.defaults, nested maps key
by key (sprig's merge functions skip false and 0, so a group could not turn a default off).
*/}}

{{/* Recursive merge of maps; `over` wins. Call with (dict "base" MAP "over" MAP); YAML out. */}}
{{- define "chart.merge" -}}
{{- $out := deepCopy .base -}}
{{- range $key, $value := .over -}}
{{- $current := index $out $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- $_ := set $out $key (include "chart.merge" (dict "base" $current "over" $value) | fromYaml) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Every group, merged: a YAML map of name -> values. Call with the root context. */}}
{{- define "chart.workerGroups" -}}
{{- $groups := dict -}}
{{- range $name, $over := .Values.workers.groups -}}
{{- $_ := set $groups $name (include "chart.merge" (dict "base" $.Values.workers.defaults "over" ($over | default dict)) | fromYaml) -}}
{{- end -}}
{{- toYaml $groups -}}
{{- end -}}

{{/* The selector labels of one group's pods. Call with (dict "ctx" $ "group" NAME). */}}
{{- define "chart.workerSelectorLabels" -}}
{{ include "chart.selectorLabels" (dict "ctx" .ctx "component" "worker") }}
{{ include "chart.name" .ctx }}/worker-group: {{ .group }}
{{- end -}}
