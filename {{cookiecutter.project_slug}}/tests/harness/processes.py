"""Real processes under a restart policy, like containers under an orchestrator.

`SupervisedProcess` starts one command in its own session (so its process group is its own),
sends its output to a log file, and, when `restart=True`, starts it again whenever it exits
while nobody asked it to (`restarts` counts that). `stop()` sends the stop signal to the main
process (as `docker stop` does), waits, then SIGKILLs what is left of its process group and of
the processes it was seen to spawn; nothing is ever killed by name. Every process any
instance has seen is remembered, so `leaked_processes()` can prove that a teardown left
nothing behind. Process trees and identities come from psutil.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shlex
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.harness.waiting import wait_until

_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
RESTART_DELAY = 0.5  # seconds; see SupervisedProcess


@dataclass(frozen=True)
class ProcessIdentity:
    """A PID plus its creation time: stays unique when the kernel reuses the PID."""

    pid: int
    create_time: float

    def alive(self) -> bool:
        """Still running (a zombie has exited) and still the process we saw."""
        try:
            process = psutil.Process(self.pid)
            return process.create_time() == self.create_time and _status(process) not in _GONE
        except psutil.Error:
            return False

    def signal(self, signum: int) -> None:
        """Signal this process if it is still the one we saw (never a recycled PID)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


def _status(process: psutil.Process) -> str:
    try:
        return str(process.status())
    except psutil.Error:
        return psutil.STATUS_DEAD


@dataclass(frozen=True)
class _Entry:
    identity: ProcessIdentity
    ppid: int
    pgid: int


class _SharedTable:
    """One process table (live processes only) shared by every supervisor thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = 0.0
        self._table: list[_Entry] = []

    def get(self, max_age: float = 0.0) -> list[_Entry]:
        with self._lock:
            if time.monotonic() - self._taken > max_age:
                self._table = []
                for process in psutil.process_iter(["ppid", "create_time", "status"]):
                    info = process.info
                    if info["status"] in _GONE or info["create_time"] is None:
                        continue
                    with contextlib.suppress(OSError):
                        self._table.append(
                            _Entry(
                                ProcessIdentity(process.pid, info["create_time"]),
                                info["ppid"],
                                os.getpgid(process.pid),
                            )
                        )
                self._taken = time.monotonic()
            return self._table


_processes = _SharedTable()


def _below(root: int, table: Sequence[_Entry]) -> list[_Entry]:
    """Every process below `root` in the parent tree (children, grandchildren...)."""
    by_parent: dict[int, list[_Entry]] = {}
    for entry in table:
        by_parent.setdefault(entry.ppid, []).append(entry)
    found: list[_Entry] = []
    pending = [root]
    while pending:
        children = by_parent.get(pending.pop(), [])
        found += children
        pending += [child.identity.pid for child in children]
    return found


# --- every process ever seen, for the leak check ----------------------------------------

_seen: dict[ProcessIdentity, str] = {}
_seen_lock = threading.Lock()
_instances: weakref.WeakSet[SupervisedProcess] = weakref.WeakSet()


def _remember(identities: Mapping[ProcessIdentity, str]) -> None:
    with _seen_lock:
        _seen.update(identities)


def leaked_processes() -> dict[ProcessIdentity, str]:
    """Processes started through this module (or seen below them) that are still running."""
    with _seen_lock:
        seen = dict(_seen)
    return {identity: name for identity, name in seen.items() if identity.alive()}


def stop_all() -> None:
    """Stop every instance still running: the safety net if a fixture never tore down."""
    for process in list(_instances):
        with contextlib.suppress(Exception):
            process.stop()


atexit.register(stop_all)


def stop_each(processes: Iterable[SupervisedProcess], what: str) -> None:
    """Stop the processes in order, every one even when one fails; then raise for them all."""
    errors = []
    for process in processes:
        try:
            process.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise RuntimeError(f"stopping {what} failed: {errors}")


# --- one-shot commands --------------------------------------------------------------------


class CommandFailed(RuntimeError):
    pass


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    log_file: Path | None = None,
) -> str:
    """Run to completion; return stdout+stderr, or raise CommandFailed carrying it."""
    completed = subprocess.run(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = completed.stdout or ""
    if log_file is not None:
        with log_file.open("a") as log:
            log.write(f"$ {shlex.join(argv)}\n{output}\n")
    if completed.returncode != 0:
        raise CommandFailed(
            f"{shlex.join(argv)} exited with {completed.returncode}:\n{output[-4000:]}"
        )
    return output


# --- supervised processes -----------------------------------------------------------------


class SupervisedProcess:
    """One long-running command with a restart policy, a log file and a clean stop.

    restart=True behaves like `restart: always` of a container: when the process exits
    while not being stopped (crash, SIGKILL from a chaos test), whatever it left in its
    process group is killed and the command starts again after RESTART_DELAY (doubling,
    up to 5 s, while it keeps dying within 5 s of starting). `restarts` counts the starts
    after the first; `exit_codes` lists every exit (negative: killed by that signal).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str],
        log_dir: str | os.PathLike[str],
        restart: bool = True,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 15.0,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = Path(cwd)
        self.log_path = Path(log_dir) / f"{name}.log"
        self.restart = restart
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.user = user
        self.restarts = 0
        self.exit_codes: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._log_offset = 0
        self._exit_handled = False
        self._known: dict[ProcessIdentity, str] = {}
        self._groups: set[int] = set()
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None
        _instances.add(self)

    def __repr__(self) -> str:
        return f"<SupervisedProcess {self.name} pid={self.pid} restarts={self.restarts}>"

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> SupervisedProcess:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"{self.name} was already started")
            self._stopping.clear()
            self._spawn()
            self._thread = threading.Thread(
                target=self._supervise, name=f"supervise-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop supervising, send the stop signal to the main process, then SIGKILL.

        Whatever the command spawned (pool children, forked helpers) goes too: the process
        group and every process seen below it are killed once the main process is gone.
        """
        timeout = self.stop_timeout if timeout is None else timeout
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        with self._lock:
            proc = self._proc
            self._track()
            if proc is not None and proc.poll() is None:
                # Like `docker stop`: the main process alone gets the stop signal (a
                # Celery worker's pool children must finish their tasks), the whole
                # group gets SIGKILL after the grace period.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, self.stop_signal)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._write_marker(f"did not stop within {timeout:.0f} s: SIGKILL")
                    self._signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            if proc is not None:
                self._record_exit(proc)
            self._kill_leftovers(grace=min(timeout, 5.0))

    def __enter__(self) -> SupervisedProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def respawn(self) -> None:
        """Start the command again now if it is not running (a manual `restart`)."""
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError(f"{self.name} is stopped")
            proc = self._proc
            if proc is not None and proc.poll() is None:
                return
            if proc is not None:
                self._record_exit(proc)
                self._kill_leftovers(grace=0)
            self.restarts += 1
            self._spawn()

    @contextlib.contextmanager
    def supervision_paused(self) -> Iterator[None]:
        """No automatic restart inside the block; on leaving it a dead process restarts."""
        self._paused.set()
        try:
            yield
        finally:
            self._paused.clear()

    # --- state ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return None if proc is None else proc.pid

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def identities(self) -> set[ProcessIdentity]:
        """The current process and everything below it, plus everything seen before."""
        with self._lock:
            self._track()
            return set(self._known)

    def children(self) -> list[int]:
        """PIDs of the direct children (e.g. a prefork worker's pool processes)."""
        return self._below(recursive=False)

    def descendants(self) -> list[int]:
        return self._below(recursive=True)

    def _below(self, *, recursive: bool) -> list[int]:
        try:
            children = psutil.Process(self.pid).children(recursive=recursive) if self.pid else []
        except psutil.Error:
            return []
        return [child.pid for child in children if _status(child) not in _GONE]

    def wait_for_exit(self, timeout: float) -> int:
        """Wait until the current incarnation exits; returns its exit code."""
        proc = self._proc
        if proc is None:
            raise RuntimeError(f"{self.name} was never started")
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} still runs after {timeout:.0f} s") from None

    def wait_for_restart(self, restarts_before: int, timeout: float) -> None:
        """Wait until supervision has started the command again (restarts > before)."""
        wait_until(
            lambda: self.restarts > restarts_before,
            timeout,
            f"{self.name} restarted",
            step=0.05,
            detail=self.log_tail,
        )

    # --- signals ----------------------------------------------------------------------

    def kill(self, signum: int = signal.SIGKILL, *, group: bool = True) -> int:
        """Send `signum` to the whole process group (default) or the main PID only.

        Returns the PID signalled. With restart=True the supervisor starts the command
        again if this ends it (unless supervision is paused).
        """
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"{self.name} is not running")
            self._track()
            if group:
                self._signal_group(proc.pid, signum)
            else:
                os.kill(proc.pid, signum)
            return proc.pid

    def kill_child(self, signum: int = signal.SIGKILL) -> int:
        """Signal one direct child (a prefork pool process); returns its PID."""
        children = self.children()
        if not children:
            raise RuntimeError(f"{self.name} has no child process")
        os.kill(children[0], signum)
        return children[0]

    # --- logs -------------------------------------------------------------------------

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    def wait_for_log(
        self, pattern: str | re.Pattern[str], timeout: float, *, since: int | None = None
    ) -> re.Match[str]:
        """Wait for `pattern` in the log, from `since` (default: this incarnation's start)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        return wait_until(
            lambda: regex.search(self.log_text(self._log_offset if since is None else since)),
            timeout,
            f"{self.name}: {regex.pattern!r} in its log",
            step=0.1,
            detail=lambda: (
                f"restarts: {self.restarts}, exits: {self.exit_codes}\n{self.log_tail()}"
            ),
        )

    # --- internals --------------------------------------------------------------------

    def _write_marker(self, text: str) -> None:
        with self.log_path.open("a") as log:
            log.write(f"=== harness {time.strftime('%H:%M:%S')} {self.name}: {text} ===\n")

    def _credentials(self) -> tuple[int | None, int | None, list[int] | None]:
        """uid, gid and supplementary groups to switch to (None: stay who we are)."""
        if self.user is None:
            return None, None, None
        entry = pwd.getpwnam(self.user)
        return entry.pw_uid, entry.pw_gid, []

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_size()
        self._write_marker(f"start #{self.restarts + 1}: {shlex.join(self.argv)}")
        uid, gid, extra_groups = self._credentials()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session, hence its own process group: signals reach only it.
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=extra_groups,
            )
        self._groups.add(self._proc.pid)
        self._started_at = time.monotonic()
        self._exit_handled = False
        self._track()

    def _track(self, max_age: float = 0.0) -> None:
        """Remember the current process and everything below it or in its group."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        table = _processes.get(max_age)
        found = {e.identity for e in table if proc.pid in (e.identity.pid, e.pgid)}
        found.update(entry.identity for entry in _below(proc.pid, table))
        new = {identity: self.name for identity in found if identity not in self._known}
        if new:
            self._known.update(new)
            _remember(new)

    def _record_exit(self, proc: subprocess.Popen[bytes]) -> None:
        if self._exit_handled or proc.returncode is None:
            return
        self._exit_handled = True
        self.exit_codes.append(proc.returncode)
        self._write_marker(f"exited with {proc.returncode}")

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    def _alive_known(self) -> list[ProcessIdentity]:
        return [identity for identity in self._known if identity.alive()]

    def _adopt_group_members(self) -> None:
        """Count every live member of our process groups as ours (even if never seen)."""
        table = _processes.get()
        for pgid in self._groups:
            members = [entry.identity for entry in table if entry.pgid == pgid]
            leader = next((identity for identity in members if identity.pid == pgid), None)
            if leader is not None and leader not in self._known:
                continue  # the ID was reused by an unrelated process group
            new = {identity: self.name for identity in members if identity not in self._known}
            self._known.update(new)
            _remember(new)

    def _kill_leftovers(self, grace: float) -> None:
        """Everything this command spawned goes with it, as when a container stops."""
        self._adopt_group_members()
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not self._alive_known(), grace, "leftovers gone", step=0.05)
        for identity in self._alive_known():
            identity.signal(signal.SIGKILL)
        wait_until(
            lambda: not self._alive_known(),
            10,
            f"{self.name}: its processes gone after SIGKILL",
            step=0.05,
            detail=lambda: f"still alive: {self._alive_known()}",
        )

    def _supervise(self) -> None:
        delay = RESTART_DELAY / 2
        last_track = 0.0
        while not self._stopping.is_set():
            with self._lock:
                proc = self._proc
                if proc is None:
                    return
                exited = proc.poll() is not None
                if not exited and time.monotonic() - last_track > 1.0:
                    self._track(max_age=1.0)
                    last_track = time.monotonic()
                if exited and not self._exit_handled:
                    self._record_exit(proc)
                    self._kill_leftovers(grace=0)
                    lived = time.monotonic() - self._started_at
                    delay = RESTART_DELAY if lived > 5 else min(delay * 2, 5.0)
            if not exited or not self.restart or self._paused.is_set():
                self._stopping.wait(0.05)
                continue
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set() or self._paused.is_set() or self._proc is not proc:
                    continue
                self.restarts += 1
                self._spawn()
