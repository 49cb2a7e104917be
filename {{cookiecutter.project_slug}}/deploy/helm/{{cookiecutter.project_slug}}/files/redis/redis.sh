#!/bin/sh
# The redis container: find the current master, write redis.conf, run redis-server on it.
# The config is written anew at every start, so a restarted node always comes back as
# what the cluster needs now (a replica of the current master), whatever it was before.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

: "${REDIS_USER_REPLICA_PASSWORD:?REDIS_USER_REPLICA_PASSWORD must be set}"

discover_master
conf=$REDIS_CONF_DIR/redis.conf
# It holds the passwords.
umask 077
{
  cat <<EOF
# Written by redis.sh at each start; Sentinel may rewrite it (CONFIG REWRITE) meanwhile.
include $(conf_string "$REDIS_PERSISTENCE_CONF")
dir $(conf_string "$REDIS_DATA_DIR")
# A replica (and a demoted master) authenticates to the master as the replica user.
masteruser replica
masterauth $(conf_string "$REDIS_USER_REPLICA_PASSWORD")
# Known to replicas, sentinels and clients by its Service name: pod IPs change.
replica-announce-ip $my_host
# A broker must never drop messages: when memory is full, writes fail instead.
maxmemory-policy noeviction
EOF
  listen_lines "$REDIS_PORT"
  acl_users redis
} >"$conf"

if [ -n "$REDIS_MAXMEMORY" ]; then
  echo "maxmemory $REDIS_MAXMEMORY" >>"$conf"
fi
if [ "$REDIS_MIN_REPLICAS_TO_WRITE" -gt 0 ]; then
  # A master cut off from its replicas stops taking writes a failover would discard.
  {
    echo "min-replicas-to-write $REDIS_MIN_REPLICAS_TO_WRITE"
    echo "min-replicas-max-lag $REDIS_MIN_REPLICAS_MAX_LAG"
  } >>"$conf"
fi

if [ "$master_host" = "$my_host" ]; then
  log "ordinal $REDIS_ORDINAL ($my_host) starts as the MASTER: $master_reason"
else
  echo "replicaof $master_host $REDIS_PORT" >>"$conf"
  log "ordinal $REDIS_ORDINAL ($my_host) starts as a REPLICA of $master_host: $master_reason"
fi

exec redis-server "$conf"
