{{/* Names, labels and the pieces every component's pods share. */}}

{{- define "chart.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or the release name alone when it already contains the chart's. */}}
{{- define "chart.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "chart.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. Call with (dict "ctx" $ "component" "api"). */}}
{{- define "chart.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: {{ include "chart.name" .ctx }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "chart.selectorLabels" . }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels a Service or a controller selects one component's pods by. */}}
{{- define "chart.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chart.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every pod of the release (the default-deny policy selects these). */}}
{{- define "chart.releaseSelector" -}}
app.kubernetes.io/name: {{ include "chart.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "chart.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chart.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "chart.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
A generated secret value that survives upgrades: the one already in the cluster when there
is one (lookup), else a fresh random one. Base64, ready for a Secret's `data`.
Call with (dict "ctx" $ "secret" NAME "key" KEY).
*/}}
{{- define "chart.generatedSecret" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- if and $existing (hasKey ($existing.data | default dict) .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum 32 | b64enc -}}
{{- end -}}
{{- end -}}

{{/* -- Security: the restricted Pod Security Standard, everywhere ------------------- */}}
{{/* Call with (dict "uid" UID "gid" GID). */}}
{{- define "chart.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
fsGroup: {{ .gid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "chart.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod-level fields every pod of the chart has. Call with the root context. */}}
{{- define "chart.podCommon" -}}
serviceAccountName: {{ include "chart.serviceAccountName" . }}
{{ include "chart.podRuntime" . }}
{{- end -}}

{{/* The rest of chart.podCommon, for a pod that picks its own ServiceAccount. */}}
{{- define "chart.podRuntime" -}}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Scheduling fields of a component's values block (nodeSelector, tolerations, ...). */}}
{{- define "chart.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* -- Redis: where the app finds it ----------------------------------------------- */}}
{{- define "chart.redisSecretName" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- printf "%s-redis" (include "chart.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The stable name of Redis pod N: its own announce Service. Call with (list $ N). */}}
{{- define "chart.redisNodeHost" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-redis-%d.%s.svc" (include "chart.fullname" $ctx) (index . 1) $ctx.Release.Namespace -}}
{{- end -}}

{{/* Sentinel addresses, host:port, comma-separated: the chart's own or redis.external's. */}}
{{- define "chart.sentinels" -}}
{{- if .Values.redis.enabled -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.redis.replicas) -}}
{{- $hosts = append $hosts (printf "%s:26379" (include "chart.redisNodeHost" (list $ $i))) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- else -}}
{{- join "," .Values.redis.external.sentinels -}}
{{- end -}}
{{- end -}}

{{- define "chart.redisMasterName" -}}
{{- ternary .Values.redis.masterName .Values.redis.external.masterName .Values.redis.enabled -}}
{{- end -}}

{{/*
The users of files/redis/users.acl (the compose stack's deploy/redis/users.acl), as a JSON
list of "<side>-<user>" (side: redis or sentinel): the Redis Secret's keys, one password each.
*/}}
{{- define "chart.redisUserKeys" -}}
{{- $keys := list -}}
{{- range $line := splitList "\n" (.Files.Get "files/redis/users.acl") -}}
{{- $words := regexSplit "\\s+" (trim $line) -1 -}}
{{- if and (ge (len $words) 2) (not (hasPrefix "#" (index $words 0))) -}}
{{- $keys = append $keys (printf "%s-%s" (index $words 0) (index $words 1)) -}}
{{- end -}}
{{- end -}}
{{- toJson $keys -}}
{{- end -}}

{{/* The variable the Redis pods' scripts read a user's password from. Call with its key. */}}
{{- define "chart.redisUserVariable" -}}
{{- $side := index (splitList "-" .) 0 -}}
{{- printf "%s_USER_%s_PASSWORD" (upper $side) (trimPrefix (printf "%s-" $side) . | upper | replace "-" "_") -}}
{{- end -}}

{{/*
"true" when the Redis pods run redis_exporter (redis.metrics.enabled), else empty. A
project generated without the metrics user (users.acl) has no redis.metrics at all.
*/}}
{{- define "chart.redisMetricsEnabled" -}}
{{- if and .Values.redis.enabled (dig "metrics" "enabled" false .Values.redis) -}}true{{- end -}}
{{- end -}}

{{/* Where the pods find the Redis TLS material (redis.tls). */}}
{{- define "chart.redisTlsDir" -}}/etc/redis-tls{{- end -}}

{{/*
One component's Redis identity as environment variables: its own user of users.acl on
Redis and Sentinel's `client` user (lookups only); with redis.tls the TLS settings
(settings.py) too. The passwords come as files (chart.appSecretFiles), or as variables
for a consumer that reads no file (chart.redisPasswordEnv). Call with (dict "ctx" $
"user" USER).
*/}}
{{- define "chart.redisClientEnv" -}}
{{- $ctx := .ctx -}}
- name: REDIS_USERNAME
  value: {{ .user | quote }}
- name: REDIS_SENTINEL_USERNAME
  value: client
{{- with $ctx.Values.redis.tls }}
{{- if .enabled }}
- name: REDIS_TLS
  value: "true"
- name: REDIS_TLS_CA_FILE
  value: {{ include "chart.redisTlsDir" $ctx }}/ca.crt
{{- if .clientSecretName }}
- name: REDIS_TLS_CERT_FILE
  value: {{ include "chart.redisTlsDir" $ctx }}/client.crt
- name: REDIS_TLS_KEY_FILE
  value: {{ include "chart.redisTlsDir" $ctx }}/client.key
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A user's Redis and Sentinel passwords as variables. Call with (dict "ctx" $ "user" USER). */}}
{{- define "chart.redisPasswordEnv" -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "chart.redisSecretName" .ctx }}
      key: redis-{{ .user }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "chart.redisSecretName" .ctx }}
      key: sentinel-client
{{- end -}}

{{/*
A Redis client pod's TLS volume (redis.tls): the CA only of redis.tls.secretName (never
the servers' key), and the client certificate of redis.tls.clientSecretName if set.
Renders nothing with TLS off. Call with the root context.
*/}}
{{- define "chart.redisTlsVolume" -}}
{{- with .Values.redis.tls }}
{{- if .enabled }}
- name: redis-tls
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ .secretName }}
          items:
            - {key: ca.crt, path: ca.crt}
      {{- if .clientSecretName }}
      - secret:
          name: {{ .clientSecretName }}
          items:
            - {key: tls.crt, path: client.crt}
            - {key: tls.key, path: client.key}
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "chart.redisTlsMount" -}}
{{- if .Values.redis.tls.enabled }}
- name: redis-tls
  mountPath: {{ include "chart.redisTlsDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* -- The ledger database ----------------------------------------------------------- */}}
{{- define "chart.databaseSecretName" -}}
{{- if and (not .Values.database.internal.enabled) .Values.database.external.existingSecret -}}
{{- .Values.database.external.existingSecret -}}
{{- else -}}
{{- printf "%s-database" (include "chart.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "chart.databaseUrlKey" -}}
{{- ternary .Values.database.external.urlKey "url" (and (not .Values.database.internal.enabled) (ne .Values.database.external.existingSecret "")) -}}
{{- end -}}

{{/* The ledger database's URL as a secret file (chart.secretFiles). */}}
{{- define "chart.databaseUrlFile" -}}
{{- dict "variable" "DATABASE_URL" "secret" (include "chart.databaseSecretName" .) "key" (include "chart.databaseUrlKey" .) | toJson -}}
{{- end -}}

{{/* -- Secrets as files -------------------------------------------------------------- */}}
{{/*
Why files: settings.py reads <NAME>_FILE, so a secret never sits in the environment, where
every child process, a crash dump and `kubectl describe` would show it. Each entry is
{variable, secret, key}: the pod's projected volume holds the key under the variable's
name, and the container gets <variable>_FILE pointing at it.
*/}}
{{- define "chart.secretFilesDir" -}}/run/secrets/app{{- end -}}

{{- define "chart.secretFileName" -}}{{ lower . | replace "_" "-" }}{{- end -}}

{{/* The <NAME>_FILE variables. Call with (dict "ctx" $ "files" LIST). */}}
{{- define "chart.secretFileEnv" -}}
{{- $ctx := .ctx -}}
{{- range .files }}
- name: {{ .variable }}_FILE
  value: {{ include "chart.secretFilesDir" $ctx }}/{{ include "chart.secretFileName" .variable }}
{{- end }}
{{- end -}}

{{- define "chart.secretFilesMount" -}}
- name: secret-files
  mountPath: {{ include "chart.secretFilesDir" . }}
  readOnly: true
{{- end -}}

{{/* The pod's volume of the files. Call with a LIST of entries. */}}
{{- define "chart.secretFilesVolume" -}}
- name: secret-files
  projected:
    # Readable by the pod's group (fsGroup) only.
    defaultMode: 0440
    sources:
      {{- range . }}
      - secret:
          name: {{ .secret }}
          items:
            - {key: {{ .key | quote }}, path: {{ include "chart.secretFileName" .variable }}}
      {{- end }}
{{- end -}}

{{/*
What an app pod reads as secret files (a JSON list for chart.secretFiles*): its Redis
user's passwords, the database URL unless "database" is false, and "secrets" (extra
entries). Call with the dict given to chart.appContainerCommon.
*/}}
{{- define "chart.appSecretFiles" -}}
{{- $redis := include "chart.redisSecretName" .ctx -}}
{{- $files := list
  (dict "variable" "REDIS_PASSWORD" "secret" $redis "key" (printf "redis-%s" .user))
  (dict "variable" "REDIS_SENTINEL_PASSWORD" "secret" $redis "key" "sentinel-client") -}}
{{- if (hasKey . "database" | ternary .database true) -}}
{{- $files = append $files (include "chart.databaseUrlFile" .ctx | fromJson) -}}
{{- end -}}
{{- concat $files (.secrets | default list) | toJson -}}
{{- end -}}

{{/* -- What every app pod gets --------------------------------------------------------- */}}
{{- define "chart.appSecretName" -}}
{{- default (printf "%s-app" (include "chart.fullname" .)) .Values.app.existingSecret -}}
{{- end -}}


{{- define "chart.appEnvFrom" -}}
- configMapRef:
    name: {{ include "chart.fullname" . }}-app
- secretRef:
    name: {{ include "chart.appSecretName" . }}
{{- end -}}

{{/* Restart the app pods when their settings or secrets change. */}}
{{- define "chart.appChecksums" -}}
checksum/app-config: {{ include (print .Template.BasePath "/app/configmap.yaml") . | sha256sum }}
checksum/app-secret: {{ include (print .Template.BasePath "/app/secret.yaml") . | sha256sum }}
{{- end -}}

{{/* Writable scratch for a read-only root file system, and the heartbeat file. */}}
{{- define "chart.tmpVolume" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- end -}}

{{- define "chart.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
The app container's fixed part. Call with (dict "ctx" $ "values" COMPONENT_VALUES "user"
REDIS_USER), plus "database" false for a pod that never touches the ledger and "secrets"
for more secret files (chart.appSecretFiles); chart.appVolumes takes the same dict.
*/}}
{{- define "chart.appContainerCommon" -}}
image: {{ include "chart.image" .ctx }}
imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
securityContext:
  {{- include "chart.containerSecurityContext" . | nindent 2 }}
env:
  # Which secrets the settings require: only this pod's own (settings.py _required_secrets).
  - name: PROCESS_KIND
    value: {{ .user | quote }}
  {{- include "chart.redisClientEnv" (dict "ctx" .ctx "user" (required "chart.appContainerCommon needs a Redis user" .user)) | nindent 2 }}
  {{- include "chart.secretFileEnv" (dict "ctx" .ctx "files" (include "chart.appSecretFiles" . | fromJsonArray)) | nindent 2 }}
  {{- with .values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
envFrom:
  {{- include "chart.appEnvFrom" .ctx | nindent 2 }}
  {{- with .values.extraEnvFrom }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
volumeMounts:
  {{- include "chart.tmpMount" . | nindent 2 }}
  {{- include "chart.secretFilesMount" .ctx | nindent 2 }}
  {{- include "chart.redisTlsMount" .ctx | nindent 2 }}
  {{- with .values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
resources:
  {{- toYaml .values.resources | nindent 2 }}
{{- end -}}

{{/*
Holds an app pod until the migrations Job has brought the schema up to date. It reads the
database URL from the pod's secret files (chart.appVolumes).
*/}}
{{- define "chart.waitForMigrations" -}}
- name: wait-for-migrations
  image: {{ include "chart.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/app/deploy/entrypoints/migrate.sh", "wait", "--timeout", {{ .Values.migrations.waitTimeoutSeconds | quote }}]
  securityContext:
    {{- include "chart.containerSecurityContext" . | nindent 4 }}
  env:
    - name: PROCESS_KIND
      value: migrate
    {{- include "chart.secretFileEnv" (dict "ctx" . "files" (list (include "chart.databaseUrlFile" . | fromJson))) | nindent 4 }}
  envFrom:
    - configMapRef:
        name: {{ include "chart.fullname" . }}-app
  volumeMounts:
    {{- include "chart.tmpMount" . | nindent 4 }}
    {{- include "chart.secretFilesMount" . | nindent 4 }}
  resources:
    {{- toYaml .Values.migrations.resources | nindent 4 }}
{{- end -}}

{{/*
A pod's volumes: /tmp, the Redis TLS material (redis.tls), the component's extras, and
with a "user" its secret files (chart.appSecretFiles). Call with (dict "ctx" $ "values"
COMPONENT_VALUES ...), the dict given to chart.appContainerCommon.
*/}}
{{- define "chart.appVolumes" -}}
volumes:
  {{- include "chart.tmpVolume" . | nindent 2 }}
  {{- if .user }}
  {{- include "chart.secretFilesVolume" (include "chart.appSecretFiles" . | fromJsonArray) | nindent 2 }}
  {{- end }}
  {{- include "chart.redisTlsVolume" .ctx | nindent 2 }}
  {{- with .values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The exec probe of a heartbeat file (healthcheck.py). Call with MAX_AGE_SECONDS. */}}
{{- define "chart.heartbeatProbe" -}}
exec:
  command: ["/app/deploy/entrypoints/healthcheck.sh", "heartbeat", "/tmp/heartbeat", "--max-age", {{ . | quote }}]
{{- end -}}

{{/* -- Priority lists: Redis keeps priority N of queue Q in the list "Q\x06\x16N" ----- */}}
{{/* JSON-quoted list names of one queue (priority 0 is the bare name). Call with Q. */}}
{{- define "chart.priorityLists" -}}
{{- $queue := . -}}
{{- $lists := list $queue -}}
{{- range $level := untilStep 1 10 1 -}}
{{- $lists = append $lists (printf "%s\x06\x16%d" $queue $level) -}}
{{- end -}}
{{- toJson $lists -}}
{{- end -}}
