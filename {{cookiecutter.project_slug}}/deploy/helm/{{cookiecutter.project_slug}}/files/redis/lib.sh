# shellcheck shell=sh
# Shared by the Redis pod's scripts (redis.sh, sentinel.sh, prestop.sh, probe.sh), which
# source it: the settings with their defaults, bounded redis-cli calls, master discovery.
# The chart's StatefulSet sets the environment; every pod has the same REDIS_NODES.
# The users are those of users.acl (the chart ships deploy/redis/users.acl): a Redis
# node's user <name> gets REDIS_USER_<NAME>_PASSWORD, a sentinel's
# SENTINEL_USER_<NAME>_PASSWORD. These scripts talk to Redis as `admin` and to Sentinel
# as `peer`, the operators' users: the preStop hook needs REPLICAOF and SENTINEL FAILOVER.
# REDIS_TLS=true: every node and sentinel serves TLS only, with REDIS_TLS_CERT_FILE,
# REDIS_TLS_KEY_FILE and REDIS_TLS_CA_FILE, and every redis-cli call here uses TLS.

set -eu
# Replies are split into words unquoted; REDIS_BIND holds "*": nothing may glob.
set -f

: "${REDIS_NODES:?REDIS_NODES must list the announce host of every ordinal, in order}"
: "${REDIS_USER_ADMIN_PASSWORD:?REDIS_USER_ADMIN_PASSWORD must be set}"
: "${SENTINEL_USER_PEER_PASSWORD:?SENTINEL_USER_PEER_PASSWORD must be set}"
: "${REDIS_USERS_ACL:=/opt/redis-scripts/users.acl}"
: "${REDIS_TLS:=false}"
: "${REDIS_PORT:=6379}"
: "${SENTINEL_PORT:=26379}"
: "${REDIS_BIND:=* -::*}"
: "${REDIS_MASTER_NAME:=mymaster}"
: "${SENTINEL_QUORUM:=2}"
: "${SENTINEL_DOWN_AFTER_MS:=5000}"
: "${SENTINEL_FAILOVER_TIMEOUT_MS:=30000}"
: "${REDIS_MIN_REPLICAS_TO_WRITE:=0}"
: "${REDIS_MIN_REPLICAS_MAX_LAG:=10}"
: "${REDIS_MAXMEMORY:=}"
: "${REDIS_CONF_DIR:=/run/redis}"
: "${REDIS_DATA_DIR:=/data}"
: "${REDIS_PERSISTENCE_CONF:=/opt/redis-scripts/persistence.conf}"
case $REDIS_TLS in
  true)
    : "${REDIS_TLS_CA_FILE:?REDIS_TLS=true needs REDIS_TLS_CA_FILE}"
    : "${REDIS_TLS_CERT_FILE:?REDIS_TLS=true needs REDIS_TLS_CERT_FILE}"
    : "${REDIS_TLS_KEY_FILE:?REDIS_TLS=true needs REDIS_TLS_KEY_FILE}"
    ;;
  false) ;;
  *)
    echo "${0##*/}: REDIS_TLS '$REDIS_TLS' is neither true nor false" >&2
    exit 1
    ;;
esac

log() {
  echo "${0##*/}: $*" >&2
}

die() {
  log "$*"
  exit 1
}

# node_host ORDINAL: that ordinal's announce host (its word in REDIS_NODES).
node_host() {
  node_index=0
  for node_word in $REDIS_NODES; do
    if [ "$node_index" = "$1" ]; then
      echo "$node_word"
      return 0
    fi
    node_index=$((node_index + 1))
  done
  return 1
}

if [ -z "${REDIS_ORDINAL:-}" ]; then
  # A StatefulSet pod is named <statefulset>-<ordinal> (the runtime sets HOSTNAME).
  # shellcheck disable=SC3028
  pod_name=${HOSTNAME:-$(uname -n)}
  REDIS_ORDINAL=${pod_name##*-}
fi
case $REDIS_ORDINAL in
  '' | *[!0-9]*) die "REDIS_ORDINAL '$REDIS_ORDINAL' is not an ordinal" ;;
esac
my_host=$(node_host "$REDIS_ORDINAL") ||
  die "ordinal $REDIS_ORDINAL has no host in REDIS_NODES ($REDIS_NODES)"

# This pod reaches its own containers directly (loopback when they bind every address),
# not through its own Service, which needs hairpin traffic and a ready DNS record.
local_host=${REDIS_BIND%% *}
local_host=${local_host#-}
case $local_host in
  '*' | 0.0.0.0) local_host=127.0.0.1 ;;
  '::*' | ::) local_host=::1 ;;
esac

# cli HOST PORT USER PASSWORD ARGS...: one redis-cli call to HOST (an entry of
# REDIS_NODES) as USER, bounded in time; the password goes through the environment, never
# the command line. Over TLS the server's certificate is checked against the CA; it may
# be addressed by loopback here, so the name is not (the servers never ask for a client
# certificate: tls-auth-clients optional).
cli() {
  cli_address=$1
  if [ "$cli_address" = "$my_host" ]; then
    cli_address=$local_host
  fi
  cli_port=$2
  cli_user=$3
  cli_password=$4
  shift 4
  if [ "$REDIS_TLS" = true ]; then
    set -- --tls --cacert "$REDIS_TLS_CA_FILE" "$@"
  fi
  REDISCLI_AUTH=$cli_password timeout 3 \
    redis-cli -h "$cli_address" -p "$cli_port" --user "$cli_user" "$@"
}

redis_cli() {
  redis_cli_host=$1
  shift
  cli "$redis_cli_host" "$REDIS_PORT" admin "$REDIS_USER_ADMIN_PASSWORD" "$@"
}

sentinel_cli() {
  sentinel_cli_host=$1
  shift
  cli "$sentinel_cli_host" "$SENTINEL_PORT" peer "$SENTINEL_USER_PEER_PASSWORD" "$@"
}

# role_of HOST: master, slave, or nothing when its redis does not answer.
role_of() {
  redis_cli "$1" ROLE 2>/dev/null | head -n 1
}

# sentinel_master HOST: the master host HOST's sentinel names; fails if it names none.
sentinel_master() {
  # A good reply is two words, host and port; errors and nil are not.
  # shellcheck disable=SC2046
  set -- $(sentinel_cli "$1" SENTINEL get-master-addr-by-name "$REDIS_MASTER_NAME" 2>/dev/null)
  [ "$#" -eq 2 ] || return 1
  case $2 in
    '' | *[!0-9]*) return 1 ;;
  esac
  echo "$1"
}

# The announce hosts of every ordinal but this one.
other_nodes() {
  for other_node in $REDIS_NODES; do
    if [ "$other_node" != "$my_host" ]; then
      echo "$other_node"
    fi
  done
}

# other_master: the first other node whose redis says it is master; fails if none does.
other_master() {
  for claimant in $(other_nodes); do
    if [ "$(role_of "$claimant")" = master ]; then
      echo "$claimant"
      return 0
    fi
  done
  return 1
}

# discover_master: sets master_host, and master_reason for the log. In order: what a
# sentinel says (this pod's own too: it outlives a restart of the redis container), else
# another node that says it is master, else ordinal 0 (a fresh install).
# shellcheck disable=SC2034 # master_host and master_reason are for the caller
discover_master() {
  for candidate in $REDIS_NODES; do
    if master_host=$(sentinel_master "$candidate"); then
      master_reason="the sentinel of $candidate names it"
      # A sentinel that still names this node while another one already is master
      # answers from before a failover away from it: follow the promoted node.
      if [ "$master_host" = "$my_host" ] && claimant=$(other_master); then
        master_host=$claimant
        master_reason="the sentinel of $candidate names this node, but $claimant says it is master"
      fi
      return 0
    fi
  done
  if master_host=$(other_master); then
    master_reason="no sentinel answered; $master_host says it is master"
    return 0
  fi
  master_host=$(node_host 0)
  master_reason="no sentinel answered and no other node is master: a fresh start, ordinal 0"
}

# conf_string VALUE: VALUE as a double-quoted string of a Redis config file.
conf_string() {
  printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"
}

# acl_users SIDE: config lines creating users.acl's users of SIDE (redis or sentinel),
# `default` off (on a Redis node still allowed to replay the AOF's transactions on a
# restart: users.acl says why); a user whose password variable is empty stays off too.
acl_users() {
  acl_side=$1
  # shellcheck disable=SC2018,SC2019  # a variable name: ASCII A-Z whatever the locale
  acl_prefix="$(printf '%s' "$acl_side" | tr a-z A-Z)_USER"
  if [ "$acl_side" = redis ]; then
    echo "user default off ~* &* +@all"
  else
    echo "user default off"
  fi
  grep -v '^[[:space:]]*#' "$REDIS_USERS_ACL" | while read -r acl_place acl_user acl_rules; do
    [ "$acl_place" = "$acl_side" ] || continue
    eval "acl_password=\${${acl_prefix}_$(printf '%s' "$acl_user" | tr a-z- A-Z_)_PASSWORD:-}"
    if [ -n "$acl_password" ]; then
      echo "user $acl_user on $(conf_string ">$acl_password") resetkeys resetchannels -@all $acl_rules"
    else
      echo "user $acl_user off resetkeys resetchannels -@all $acl_rules"
    fi
  done
}

# listen_lines PORT: where a server listens, plain or (REDIS_TLS) TLS only, with the
# certificate of the Secret; replication and Sentinel's own links use TLS too.
listen_lines() {
  echo "bind $REDIS_BIND"
  if [ "$REDIS_TLS" = true ]; then
    echo "port 0"
    echo "tls-port $1"
    echo "tls-cert-file $(conf_string "$REDIS_TLS_CERT_FILE")"
    echo "tls-key-file $(conf_string "$REDIS_TLS_KEY_FILE")"
    echo "tls-ca-cert-file $(conf_string "$REDIS_TLS_CA_FILE")"
    echo "tls-replication yes"
    # Clients authenticate with their ACL user; a client certificate is not required.
    echo "tls-auth-clients optional"
  else
    echo "port $1"
  fi
}
