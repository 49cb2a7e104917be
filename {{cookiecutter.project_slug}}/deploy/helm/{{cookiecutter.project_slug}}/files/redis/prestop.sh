#!/bin/sh
# preStop hook of the redis container. A master hands its role over before it stops: it
# asks a sentinel for a failover (SENTINEL FAILOVER) and waits, up to
# PRESTOP_TIMEOUT_SECONDS (60), until the sentinels name another master and this node is
# its replica. A replica stops at once. Always exits 0: the hook reports, it never holds
# the stop back beyond its timeout.
trap 'exit 0' EXIT
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

timeout_seconds=${PRESTOP_TIMEOUT_SECONDS:-60}
started=$(date +%s)
deadline=$((started + timeout_seconds))

role=$(role_of "$my_host")
if [ "$role" != master ]; then
  log "this node ($my_host) is ${role:-not answering}, not the master: nothing to hand over"
  exit 0
fi

# This pod's own sentinel first (no network in between), then the others.
asked=
for candidate in "$my_host" $(other_nodes); do
  reply=$(sentinel_cli "$candidate" SENTINEL FAILOVER "$REDIS_MASTER_NAME" 2>&1) || true
  case $reply in
    # INPROG: a failover is already under way; asking another sentinel would race it.
    OK | INPROG*)
      asked=$candidate
      break
      ;;
  esac
  log "the sentinel of $candidate did not start a failover: ${reply:-no answer}"
done
if [ -z "$asked" ]; then
  log "no sentinel started a failover: stopping as the master"
  exit 0
fi
log "the sentinel of $asked fails over away from $my_host ($reply)"

while [ "$(date +%s)" -lt "$deadline" ]; do
  new_master=$(sentinel_master "$asked") || new_master=$my_host
  if [ "$new_master" != "$my_host" ] && [ "$(role_of "$new_master")" = master ]; then
    role=$(role_of "$my_host")
    if [ "$role" = slave ]; then
      log "handed over to $new_master in $(($(date +%s) - started)) s; this node is its replica"
      exit 0
    fi
    # Sentinel turns a live old master into a replica only some seconds after the
    # switch; until then both would take writes, and the old one's would be lost.
    if [ "$role" = master ]; then
      redis_cli "$my_host" REPLICAOF "$new_master" "$REDIS_PORT" >/dev/null 2>&1 || true
    fi
  fi
  sleep 0.2
done
log "no handover within $timeout_seconds s (this node: $(role_of "$my_host"))"
