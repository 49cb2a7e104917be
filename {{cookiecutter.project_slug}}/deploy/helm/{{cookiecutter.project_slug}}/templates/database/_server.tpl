{{/* What the in-chart database server of each kind needs: a YAML map (use fromYaml). */}}
{{- define "chart.database" -}}
{{- if eq .Values.database.kind "postgresql" -}}
scheme: postgresql+psycopg
port: 5432
dataPath: /var/lib/postgresql/data
# A subdirectory: initdb refuses a mount point that holds lost+found.
env:
  POSTGRES_USER: app
  POSTGRES_DB: app
  PGDATA: /var/lib/postgresql/data/pgdata
passwordEnv: POSTGRES_PASSWORD
probe: ["pg_isready", "--username=app", "--dbname=app", "--host=127.0.0.1"]
runDir: /var/run/postgresql
{{- else -}}
scheme: mysql+pymysql
port: 3306
dataPath: /var/lib/mysql
env:
  MARIADB_USER: app
  MARIADB_DATABASE: app
  MARIADB_RANDOM_ROOT_PASSWORD: "yes"
passwordEnv: MARIADB_PASSWORD
probe: ["healthcheck.sh", "--connect", "--innodb_initialized"]
runDir: /run/mysqld
{{- end -}}
{{- end -}}

{{/* The database port the app pods connect to: the in-chart server's or the external one's. */}}
{{- define "chart.databasePort" -}}
{{- if .Values.database.internal.enabled -}}
{{- (include "chart.database" . | fromYaml).port -}}
{{- else -}}
{{- .Values.database.external.port -}}
{{- end -}}
{{- end -}}
