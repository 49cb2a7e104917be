"""Real-process test harness: the service's own processes against private Redis and databases.

One job per module:

- `waiting`: `wait_until`, the one way to poll (re-exported by `probes`);
- `ports`: free loopback ports;
- `processes`: `SupervisedProcess`, a command with a restart policy, a log file and a clean
  stop (and `leaked_processes()`, on psutil, to prove a teardown left nothing running);
- `binaries`: where server binaries are, and skip (locally) or fail (CI=true) without them;
- `redis`: `RedisSentinelCluster` and `StandaloneRedis`;
- `databases`: `PostgresServer`, `MariaDBServer`, `SqliteDatabase`, `database_for(kind)`;
- `stack`: `Stack`, the API, workers, beat{% if cookiecutter.use_flower == "yes" %} and Flower{% endif %} through deploy/entrypoints/*.sh;
- `api`: `ApiClient`, submit / status / cancel / wait_for_state over HTTP.

tests/integration/conftest.py turns them into pytest fixtures.
"""
