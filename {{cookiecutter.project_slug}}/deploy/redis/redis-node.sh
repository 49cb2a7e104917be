#!/bin/sh
# One node of the Redis Sentinel group: redis-node.sh master|replica|sentinel.
# Runs inside the official Redis image (docker-compose.yml mounts deploy/redis/ at
# /etc/redis-node). On the FIRST start it writes the node's config into its data volume;
# after that Redis and Sentinel own the file (CONFIG REWRITE after a failover), so a
# restarted node keeps its current role and epoch instead of the one it was created with.
# Passwords come from files compose mounts (/run/secrets/<variable in lower case>) or from
# the environment, never from the command line. The users are those of users.acl: a Redis
# node's user <name> gets REDIS_USER_<NAME>_PASSWORD, a sentinel's
# SENTINEL_USER_<NAME>_PASSWORD; a user without its password stays off, as does `default`.
#   REDIS_ANNOUNCE_HOST  this node's DNS name (announced to Sentinel and to clients)
#   REDIS_MASTER_HOST    the first master's DNS name (default redis-master)
#   REDIS_MASTER_NAME
#   REDIS_MAXMEMORY      the memory bound of a node (default 1gb; noeviction: memory.conf)
#   SENTINEL_QUORUM (2), SENTINEL_DOWN_AFTER_MS (5000), SENTINEL_FAILOVER_TIMEOUT_MS (30000)
#   SENTINEL_LIVE_DIR    where Sentinel's working config lives (default /run/sentinel)
set -eu

# Each mounted secret file as the shell variable it names (not exported).
for secret in /run/secrets/*; do
  [ -f "$secret" ] || continue
  # shellcheck disable=SC2018,SC2019  # a variable name: ASCII A-Z whatever the locale
  variable="$(basename "$secret" | tr a-z A-Z)"
  # shellcheck disable=SC2229  # reads into the variable named by $variable, on purpose
  IFS= read -r "$variable" <"$secret" || true
done

role="${1:?usage: redis-node.sh master|replica|sentinel}"
announce="${REDIS_ANNOUNCE_HOST:?REDIS_ANNOUNCE_HOST must name this node}"
master_host="${REDIS_MASTER_HOST:-redis-master}"
master_name="${REDIS_MASTER_NAME:-mymaster}"
conf="/data/$role.conf"

# users.acl's users of one side (redis or sentinel) as config lines.
acl_users() {
  side="$1"
  # shellcheck disable=SC2018,SC2019  # a variable name: ASCII A-Z whatever the locale
  prefix="$(printf '%s' "$side" | tr a-z A-Z)_USER"
  grep -v '^[[:space:]]*#' /etc/redis-node/users.acl | while read -r place user rules; do
    [ "$place" = "$side" ] || continue
    eval "password=\${${prefix}_$(printf '%s' "$user" | tr a-z- A-Z_)_PASSWORD:-}"
    if [ -n "$password" ]; then
      echo "user $user on >$password resetkeys resetchannels -@all $rules"
    else
      echo "user $user off resetkeys resetchannels -@all $rules"
    fi
  done
}

if [ ! -s "$conf" ]; then
  umask 077
  case "$role" in
    master | replica)
      {
        echo "# Written by redis-node.sh on first start; Redis rewrites it after failovers."
        echo "include /etc/redis-node/persistence.conf"
        echo "include /etc/redis-node/memory.conf"
        echo "maxmemory ${REDIS_MAXMEMORY:-1gb}"
        echo "dir /data"
        echo "port 6379"
        # Off, yet allowed to replay the AOF's transactions on a restart (users.acl).
        echo "user default off ~* &* +@all"
        acl_users redis
        # A replica (and a demoted master) authenticates to the master as `replica`; a
        # lone node (no replica user) has no master to authenticate to.
        if [ -n "${REDIS_USER_REPLICA_PASSWORD:-}" ]; then
          echo "masteruser replica"
          echo "masterauth $REDIS_USER_REPLICA_PASSWORD"
        fi
        # Known to Sentinel (and so to clients) by name: container IPs change on restart.
        echo "replica-announce-ip $announce"
        if [ "$role" = replica ]; then
          echo "replicaof $master_host 6379"
        fi
      } >"$conf"
      ;;
    sentinel)
      : "${SENTINEL_USER_PEER_PASSWORD:?SENTINEL_USER_PEER_PASSWORD must be set}"
      : "${REDIS_USER_SENTINEL_PASSWORD:?REDIS_USER_SENTINEL_PASSWORD must be set}"
      {
        echo "# Written by redis-node.sh on first start; Sentinel rewrites it as it learns."
        echo "port 26379"
        echo "dir /data"
        echo "sentinel resolve-hostnames yes"
        echo "sentinel announce-hostnames yes"
        echo "sentinel announce-ip $announce"
        echo "user default off"
        acl_users sentinel
        # Sentinels authenticate to each other as `peer`, to the Redis nodes as `sentinel`.
        echo "sentinel sentinel-user peer"
        echo "sentinel sentinel-pass $SENTINEL_USER_PEER_PASSWORD"
        echo "sentinel monitor $master_name $master_host 6379 ${SENTINEL_QUORUM:-2}"
        echo "sentinel auth-user $master_name sentinel"
        echo "sentinel auth-pass $master_name $REDIS_USER_SENTINEL_PASSWORD"
        echo "sentinel down-after-milliseconds $master_name ${SENTINEL_DOWN_AFTER_MS:-5000}"
        echo "sentinel failover-timeout $master_name ${SENTINEL_FAILOVER_TIMEOUT_MS:-30000}"
        echo "sentinel parallel-syncs $master_name 1"
      } >"$conf"
      ;;
    *)
      echo "redis-node.sh: unknown role '$role' (master, replica or sentinel)" >&2
      exit 64
      ;;
  esac
fi

# The image's own entrypoint drops to the redis user and fixes ownership of /data.
if [ "$role" = sentinel ]; then
  # Sentinel fsyncs its config file on its event loop before it answers a vote: on a busy
  # disk that took 0.5-1 s in all three sentinels at once, so each voted for itself (no
  # leader, then a 2 x failover-timeout wait) and a longer stall is a TILT (30 s idle).
  # So Sentinel rewrites a copy in memory (SENTINEL_LIVE_DIR, a tmpfs in compose), and a
  # background loop saves that copy into the data volume within a second of each change,
  # its fsync off Sentinel's event loop; a restarted sentinel starts from the saved copy.
  live_dir="${SENTINEL_LIVE_DIR:-/run/sentinel}"
  live="$live_dir/sentinel.conf"
  umask 077
  mkdir -p "$live_dir"
  chmod 700 "$live_dir"
  cp "$conf" "$live"
  chown -R redis:redis "$live_dir"
  (
    set +e
    while sleep 1; do
      cmp -s "$live" "$conf" && continue
      cp "$live" "$conf.saving" && sync "$conf.saving" && mv "$conf.saving" "$conf"
    done
  ) &
  exec docker-entrypoint.sh redis-server "$live" --sentinel
fi
exec docker-entrypoint.sh redis-server "$conf"
