"""The verbs of the engine (docs/engine-protocol.md): each reads as the steps it takes.

``Engine(request, backend).run()`` returns the VerbResult; errors of the whole verb raise EngineError subclasses
(``__main__`` turns them into the JSON ``error`` and the exit code). Changing verbs hold the host lock and run
``recover`` first.

``apply``, ``plan`` and ``rollback`` work on several processes at once, in worker threads (request field
``workers``, default 8, never more threads than processes). ptrace binds a tracee to the tracer thread, and a
Windows debug attach is per thread too, so each process is handled wholly by one worker: open, verify, stage,
quiesce, switch, resume, rollback, close.
Results are reported in PID order whatever order the workers finish in.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from ..backends import platform_of, select_backend
from ..backends.base import Backend, ModuleInfo, ProcessInfo
from ..errors import BackendError, EngineError, RequestError
from ..package import Package, read_package
from .codestate import FileHashes, check_image, code_of, describe_other, read_functions
from .coldpatch import stage_module, unstage_module
from .discovery import Target, discover, find_module, identity, select
from .facts import os_facts
from .journal import ApplyJournal, Journal, PackageRef, ProcessRecord
from .lock import HostLock
from .recovery import live_processes, recover
from .request import DEFAULT_WORKERS, Request
from .result import ProcessResult, VerbResult
from .rollback import RollbackTransaction
from .transaction import Options, PatchTransaction
from .trust import check_trust

__all__ = ["DEFAULT_WORKERS", "Engine", "execute", "for_each_process"]

# While workers run, a thread whose process is stopped must get the GIL back quickly when its system call returns:
# the default 5 ms switch interval would add up to 5 ms to a pause behind another worker's Python work.
_SWITCH_INTERVAL_S = 0.0002

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


def for_each_process(items: Sequence[Item], work: Callable[[Item], Outcome], workers: int) -> List[Outcome]:
    """``[work(item) for item in items]`` run by up to ``workers`` threads, each item wholly in one thread;
    results in item order. With one worker (or one item) everything runs in the calling thread.

    An exception stops the hand-out of further items (like the engine dying, nothing new is started); the workers
    finish the items they hold, then the first exception is raised again in the caller.
    """
    if workers <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    results: Dict[int, Outcome] = {}
    failures: List[BaseException] = []
    lock = threading.Lock()
    position = [0]

    def worker() -> None:
        while True:
            with lock:
                if failures or position[0] >= len(items):
                    return
                index = position[0]
                position[0] += 1
            try:
                outcome = work(items[index])
            except BaseException as exc:
                with lock:
                    failures.append(exc)
                return
            with lock:
                results[index] = outcome

    threads = [
        threading.Thread(target=worker, name=f"rebootless-worker-{n}", daemon=True)
        for n in range(min(workers, len(items)))
    ]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, _SWITCH_INTERVAL_S))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    if failures:
        raise failures[0]
    return [results[index] for index in range(len(items))]


class Engine:
    """One verb run. ``backend`` is injected by tests; otherwise chosen from the request."""

    def __init__(self, request: Request, backend: Optional[Backend] = None, workers: Optional[int] = None) -> None:
        self.request = request
        self._backend = backend
        # ``workers`` from the caller (tests, benchmarks), else the request's (default DEFAULT_WORKERS)
        self.workers = workers if workers is not None else request.workers
        self.platform = backend.name if backend is not None else platform_of(request.backend)
        self.journal = Journal(request.state_dir)
        self.options = Options(request.retries, request.retry_delay_ms, request.activeness_check)
        self.result = VerbResult(request.verb, platform=self.platform)
        self.package: Optional[Package] = None
        self.ref: Optional[PackageRef] = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = select_backend(self.request.backend)
        return self._backend

    def run(self) -> VerbResult:
        """Run the request's verb; raises EngineError for errors of the whole verb."""
        verbs: Dict[str, Callable[[], None]] = {
            "inspect": self.inspect,
            "plan": self.plan,
            "apply": self.apply,
            "verify": self.verify,
            "rollback": self.rollback,
            "stage": self.stage,
            "unstage": self.unstage,
            "status": self.status,
            "recover": self.recover,
        }
        if self.request.package:
            self._load_package()
        verbs[self.request.verb]()
        return self.result

    # -- verbs ---------------------------------------------------------------------------------------------------

    def inspect(self) -> None:
        """Platform and OS facts, processes loading the module, applied and staged packages. Changes nothing."""
        self.result.facts = os_facts(self.platform)
        module = self.request.module or (self.package.manifest.module if self.package else None)
        if module:
            with self._targets(module) as targets:
                for target in targets:
                    proc = _process_result(target, "loaded")
                    proc.reason = target.module.path
                    self.result.processes.append(proc)
        self._report_journal()

    def plan(self) -> None:
        """What apply (state present) or rollback (state absent) would do per process. Changes nothing."""
        if self.request.state == "absent":
            self._rollback(dry_run=True)
        else:
            self._apply(dry_run=True)

    def apply(self) -> None:
        """Hotpatch every matching process; idempotent."""
        with self._locked():
            self._apply(dry_run=False)

    def verify(self) -> None:
        """Which processes run the base code and which run this package's code. Changes nothing."""
        package, hashes = self._package(), FileHashes()
        applied = self._applied_index()
        with self._targets(package.manifest.module) as targets:
            for target in targets:
                proc = _process_result(target, "not_patched")
                proc.functions = len(package.manifest.functions)
                image = check_image(target.handle, target.module, package.manifest, hashes)
                if image.image == "patched":
                    code, reason = "patched", image.reason
                elif image.image != "base":
                    code, reason = "unknown", image.reason
                else:
                    record = applied.get(identity(target.info))
                    views = read_functions(
                        target.handle, target.module.base, package.manifest, record.blob_address if record else None
                    )
                    code = code_of(views)
                    reason = describe_other(views) if code == "unknown" else None
                    if record is not None and record.state != "applied" and reason is None:
                        reason = f"journal record {record.state}: an engine is at work or was interrupted; the next run settles it"
                proc.code_before = proc.code_after = code
                proc.result = {"patched": "patched", "base": "not_patched"}.get(code, "refused")
                proc.reason = reason
                self.result.add(proc)
        self.result.changed = False

    def rollback(self) -> None:
        """Undo this package in every journaled process, under quiesce."""
        with self._locked():
            self._rollback(dry_run=False)

    def stage(self) -> None:
        """Cold path: put the patched module on disk for the next start; the original is kept for undo."""
        with self._locked():
            package, ref = self._package(), self._ref()
            path = self._module_path()
            changed, entry = stage_module(
                self.journal, package, ref, path, replace_other_build=self.request.replace_other_build
            )
            self.result.changed = self.result.changed or changed
            self.result.staged.append(entry)

    def unstage(self) -> None:
        """Restore the original module staged aside by ``stage``."""
        with self._locked():
            package, ref = self._package(), self._ref()
            path = self._module_path()
            changed, entry = unstage_module(self.journal, ref, path, package.manifest.base.sha256)
            self.result.changed = self.result.changed or changed
            if entry is not None:
                self.result.staged.append(entry)
            for record in self.journal.stages(ref.key):
                if record.final:
                    self.journal.archive(record)

    def status(self) -> None:
        """Applied and staged packages recorded in the journal, with process liveness. Changes nothing."""
        self._report_journal()

    def recover(self) -> None:
        """Finish or undo whatever a killed engine left in the journal."""
        with self._locked():
            pass

    # -- shared steps ----------------------------------------------------------------------------------------------

    def _apply(self, dry_run: bool) -> None:
        package, ref = self._package(), self._ref()
        manifest = package.manifest
        applied = self._applied_index()
        hashes = FileHashes()
        record_file = self.journal.new_apply(ref)
        chosen = sorted(select(self.backend.processes(), self.request.names, self.request.pids), key=lambda i: i.pid)

        def apply_one(info: ProcessInfo) -> Tuple[Optional[ProcessResult], Optional[str]]:
            """Everything for one process, in the calling worker thread: open, find the module, patch, close."""
            target, reason = self._open_target(info, manifest.module)
            if target is None:
                return None, reason
            try:
                if not manifest.hotpatchable:
                    proc = _process_result(target, "refused")
                    proc.reason = "the package is cold-only: " + (
                        "; ".join(f"{r.function}: {r.reason}" for r in manifest.refusals) or "no hotpatchable function"
                    )
                    return proc, None
                transaction = PatchTransaction(
                    target,
                    package,
                    self.journal,
                    record_file,
                    applied.get(identity(target.info)),
                    self.options,
                    hashes,
                    dry_run,
                )
                return transaction.run(), None
            finally:
                target.handle.close()

        outcomes = for_each_process(chosen, apply_one, self._workers(len(chosen)))
        self.result.reasons.extend(reason for _proc, reason in outcomes if reason)
        for proc, _reason in outcomes:
            if proc is not None:
                self.result.add(proc)
        if os.path.exists(record_file.path):
            self.result.journal = record_file.path
            if record_file.final:
                self.journal.archive(record_file)
        self.result.cold_patch_required = not manifest.hotpatchable or any(
            p.result == "refused" for p in self.result.processes
        )

    def _open_target(self, info: ProcessInfo, module_name: str) -> Tuple[Optional[Target], Optional[str]]:
        """(target, None) for a process with the module loaded; (None, reason or None) otherwise, with a reason
        only when the request named processes (like ``discover``: a host has many the engine may not open)."""
        explicit = bool(self.request.names or self.request.pids)
        try:
            handle = self.backend.open(info.pid)
        except BackendError as exc:
            return None, f"{info.name} (pid {info.pid}): cannot open the process: {exc}" if explicit else None
        try:
            module = find_module(handle.modules(), module_name)
        except BackendError as exc:
            handle.close()
            return None, f"{info.name} (pid {info.pid}): cannot list its modules: {exc}" if explicit else None
        if module is None:
            handle.close()
            return None, None
        return Target(info, handle, module), None

    def _workers(self, processes: int) -> int:
        """Worker threads for ``processes`` processes: the requested count, never more than the processes."""
        return max(1, min(self.workers, processes))

    def _rollback(self, dry_run: bool) -> None:
        ref = self._ref()
        live = live_processes(self.backend)
        chosen = {identity(i) for i in select(list(live.values()), self.request.names, self.request.pids)}
        files = self.journal.applies(ref.key)
        work: List[Tuple[ApplyJournal, ProcessRecord, ProcessInfo]] = []
        for record_file in files:
            touched = False
            for record in record_file.processes:
                if record.state != "applied":
                    continue
                key = (record.pid, record.start_time)
                if key not in live:
                    if not dry_run:
                        self.journal.touch(record, "retired", "the process exited (or its PID was reused)")
                        touched = True
                    continue
                if key in chosen:
                    work.append((record_file, record, live[key]))
            if touched:
                self.journal.save(record_file)
        work.sort(key=lambda item: item[2].pid)
        outcomes = for_each_process(
            work, lambda item: self._rollback_one(item[0], item[1], item[2], dry_run), self._workers(len(work))
        )
        for proc in outcomes:
            self.result.add(proc)
        for record_file in files:
            if not dry_run and record_file.final:
                self.journal.archive(record_file)
            if not dry_run:
                self.result.journal = record_file.path

    def _rollback_one(
        self, record_file: ApplyJournal, record: ProcessRecord, info: ProcessInfo, dry_run: bool
    ) -> ProcessResult:
        try:
            handle = self.backend.open(record.pid)
        except EngineError as exc:
            proc = ProcessResult(record.pid, record.name, record.start_time, record.windows_pid, result="failed")
            proc.reason = f"cannot open the process: {exc}"
            return proc
        try:
            module = _module_at(record)
            target = Target(info, handle, module)
            return RollbackTransaction(target, self.journal, record_file, record, self.options, dry_run).run()
        finally:
            handle.close()

    def _report_journal(self) -> None:
        live = None
        for record_file in self.journal.applies():
            for record in record_file.processes:
                if record.final:
                    continue
                if live is None:
                    live = live_processes(self.backend)
                self.result.applied.append(
                    {
                        "package": record_file.package.id,
                        "version": record_file.package.version,
                        "module": record_file.package.module,
                        "key": record_file.package.key,
                        "pid": record.pid,
                        "windows_pid": record.windows_pid,
                        "name": record.name,
                        "start_time": record.start_time,
                        "state": record.state,
                        "alive": (record.pid, record.start_time) in live,
                        "blob_address": record.blob_address,
                        "journal": record_file.path,
                    }
                )
        for stage in self.journal.stages():
            if not stage.final:
                self.result.staged.append(
                    {
                        "package": stage.package.id,
                        "version": stage.package.version,
                        "path": stage.module_path,
                        "backup": stage.backup,
                        "sha256_before": stage.sha256_before,
                        "sha256_after": stage.sha256_after,
                        "state": stage.state,
                        "journal": stage.path,
                    }
                )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with HostLock(self.request.state_dir, self.request.lock_timeout_s):
            self.result.recovered = recover(self.backend, self.journal, self.options)
            if any(action["changed"] for action in self.result.recovered):
                self.result.changed = True
            yield

    @contextlib.contextmanager
    def _targets(self, module: str) -> Iterator[List[Target]]:
        targets, reasons = discover(self.backend, module, self.request.names, self.request.pids)
        self.result.reasons.extend(reasons)
        try:
            yield targets
        finally:
            for target in targets:
                target.handle.close()

    def _applied_index(self) -> Dict[Tuple[int, str], ProcessRecord]:
        """Journaled processes whose blob this package's jumps may point at, by (pid, start_time).

        Unfinished records ("switching", "rolling_back") count too: a reader (verify, plan) running while another
        engine is between its first jump and its completed record, or after one was killed there, must recognise
        those jumps as this package's, not as another tool's. Writers recover such records before they look.
        """
        index = {}
        for record_file in self.journal.applies(self._ref().key):
            for record in record_file.processes:
                if record.state in ("applied", "switching", "rolling_back"):
                    index[(record.pid, record.start_time)] = record
        return index

    def _module_path(self) -> str:
        if self.request.module_path:
            return self.request.module_path
        paths = set()
        with self._targets(self._package().manifest.module) as targets:
            paths = {target.module.path for target in targets}
        if len(paths) == 1:
            return paths.pop()
        raise RequestError(
            "give module_path: "
            + ("no running process loads the module" if not paths else f"processes load it from {sorted(paths)}")
        )

    def _load_package(self) -> None:
        if self.request.package is None:  # narrows the type; a bug if it ever holds
            raise AssertionError("self.request.package must be set here")
        package = read_package(self.request.package)
        trust = check_trust(package, self.request.allow_unsigned, self.request.trusted_keys)
        manifest = package.manifest
        self.package = package
        self.ref = PackageRef(
            manifest.package_id,
            manifest.version,
            manifest.module,
            hashlib.sha256(package.manifest_bytes).hexdigest(),
            package.sha256,
        )
        self.result.package = {
            "id": manifest.package_id,
            "version": manifest.version,
            "module": manifest.module,
            "sha256": package.sha256,
            "key": self.ref.key,
            "hotpatchable": manifest.hotpatchable,
            "functions": [f.name for f in manifest.functions],
            "trust": trust.as_dict(),
        }

    def _package(self) -> Package:
        if self.package is None:
            raise RequestError(f"verb {self.request.verb} needs 'package'")
        return self.package

    def _ref(self) -> PackageRef:
        self._package()
        if self.ref is None:  # narrows the type; a bug if it ever holds
            raise AssertionError("self.ref must be set here")
        return self.ref


def _process_result(target: Target, result: str) -> ProcessResult:
    info = target.info
    return ProcessResult(
        info.pid, info.name, info.start_time, info.windows_pid, result=result, module_base=target.module.base
    )


def _module_at(record: ProcessRecord) -> ModuleInfo:
    return ModuleInfo(os.path.basename(record.module_path), record.module_path, record.module_base, 0)


def execute(
    request: Request, backend: Optional[Backend] = None, workers: Optional[int] = None
) -> Tuple[int, VerbResult]:
    """Run ``request`` and return (exit code, result); an error of the whole verb becomes ``result.error``.
    ``workers`` overrides the request's worker count (tests and benchmarks)."""
    engine = Engine(request, backend, workers)
    try:
        result = engine.run()
    except EngineError as exc:
        engine.result.error = {"kind": exc.kind, "message": str(exc)}
        return exc.exit_code, engine.result
    return result.exit_code, result
