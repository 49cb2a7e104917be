#!/bin/sh
# The sentinel container: find the current master, write sentinel.conf, run the sentinel.
# The config is written anew at every start (Sentinel rewrites it while it runs), so a
# restarted sentinel monitors the master the others agree on now, not a stale one.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

: "${SENTINEL_ID_SEED:?SENTINEL_ID_SEED must be set (the release name)}"

# sentinel_myid ORDINAL: 40 hex characters, the same for an ordinal at every start, so
# the other sentinels keep knowing this one as one sentinel, not a new one per restart.
sentinel_myid() {
  printf '%s' "$SENTINEL_ID_SEED-$1" | sha1sum | cut -c 1-40
}

: "${REDIS_USER_SENTINEL_PASSWORD:?REDIS_USER_SENTINEL_PASSWORD must be set}"

discover_master
conf=$REDIS_CONF_DIR/sentinel.conf
# It holds the passwords.
umask 077
{
  cat <<EOF
# Written by sentinel.sh at each start; Sentinel rewrites it as it learns.
dir $(conf_string "$REDIS_CONF_DIR")
sentinel myid $(sentinel_myid "$REDIS_ORDINAL")
# Nodes and sentinels are known by their Service names (pod IPs change); resolve them at
# each connection and report names, not addresses. Set before any name is used below.
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $my_host
# Sentinels authenticate to each other as peer, to the Redis nodes as sentinel.
sentinel sentinel-user peer
sentinel sentinel-pass $(conf_string "$SENTINEL_USER_PEER_PASSWORD")
sentinel monitor $REDIS_MASTER_NAME $master_host $REDIS_PORT $SENTINEL_QUORUM
sentinel auth-user $REDIS_MASTER_NAME sentinel
sentinel auth-pass $REDIS_MASTER_NAME $(conf_string "$REDIS_USER_SENTINEL_PASSWORD")
sentinel down-after-milliseconds $REDIS_MASTER_NAME $SENTINEL_DOWN_AFTER_MS
sentinel failover-timeout $REDIS_MASTER_NAME $SENTINEL_FAILOVER_TIMEOUT_MS
# After a failover one replica at a time resyncs; the others keep serving.
sentinel parallel-syncs $REDIS_MASTER_NAME 1
EOF
  listen_lines "$SENTINEL_PORT"
  acl_users sentinel
} >"$conf"

log "ordinal $REDIS_ORDINAL ($my_host) monitors $master_host as $REDIS_MASTER_NAME: $master_reason"
exec redis-server "$conf" --sentinel
