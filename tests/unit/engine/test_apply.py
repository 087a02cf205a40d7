"""apply / plan / verify against the strict fake backend: the invariants of ARCHITECTURE.md section 5."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Runner
from .fake_backend import FakeBackend, FakeProcess
from .images import BASE, Fixture, build, cold_only, spawn


def test_apply_redirects_every_function_to_the_blob(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    code, result = run("apply")
    assert code == 0 and result["ok"] and result["changed"]
    assert proc.code() == {"fn0": "patched", "fn1": "patched", "fn2": "patched"}
    (entry,) = result["processes"]
    assert entry["result"] == "patched" and (entry["code_before"], entry["code_after"]) == ("base", "patched")
    assert entry["pause_us"] >= 1 and entry["functions"] == 3
    (blob,) = proc.blobs()
    assert blob.prot == "rx" and BASE < blob.start < BASE + 0x7FFF0000


def test_applied_blob_is_relocated_for_where_it_landed(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    run("apply")
    (blob,) = proc.blobs()
    rel = int.from_bytes(blob.data[3:7], "little", signed=True)
    assert blob.start + 7 + rel == BASE + 0x1000  # fn0's lea reaches the base image's data
    assert int.from_bytes(blob.data[9:17], "little") == blob.start  # abs64 to the blob itself


def test_unwind_table_is_registered_before_any_jump_is_written(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    run("apply")
    (blob,) = proc.blobs()
    assert proc.tables == {blob.start + fx.manifest.unwind.offset: (3, BASE)}  # type: ignore[union-attr]
    first_code_write = next(i for i, call in enumerate(proc.log) if call.startswith("write code"))
    assert proc.log.index("add_function_table") < first_code_write
    # the blob's RUNTIME_FUNCTIONs are image-relative to the module base
    table = blob.start + fx.manifest.unwind.offset - blob.start  # type: ignore[union-attr]
    begin = int.from_bytes(blob.data[table : table + 4], "little")
    assert begin == blob.start - BASE


def test_each_function_is_switched_in_one_write_unless_its_jumps_straddle_a_page(
    backend: FakeBackend, fx: Fixture, run: Runner
) -> None:
    proc = spawn(backend, fx)
    run("apply")
    writes = [(int(c.split()[-1], 16), int(c.split()[-2])) for c in proc.log if c.startswith("write code")]
    e0, e1, e2 = (f.entry for f in proc.functions.values())
    assert e0 % 0x1000 == 0, "fn0's jumps straddle a page boundary"
    # fn0: long jump before short jump (an engine killed between the pages leaves only the padding written);
    # fn1, fn2: both jumps in one write of 7 bytes
    assert writes == [(e0 - 5, 5), (e0, 2), (e1 - 5, 7), (e2 - 5, 7)]


def test_second_apply_changes_nothing(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    run("apply")
    before = [bytes(r.data) for r in proc.regions]
    code, result = run("apply")
    assert code == 0 and result["changed"] is False
    assert result["processes"][0]["result"] == "already_patched"
    assert [bytes(r.data) for r in proc.regions] == before and len(proc.blobs()) == 1


def test_a_process_started_after_apply_is_patched_by_the_next_apply(
    backend: FakeBackend, fx: Fixture, run: Runner
) -> None:
    first = spawn(backend, fx)
    run("apply")
    second = spawn(backend, fx)
    assert set(second.code().values()) == {"base"}
    code, result = run("apply")
    assert code == 0 and result["changed"]
    by_pid = {p["pid"]: p["result"] for p in result["processes"]}
    assert by_pid == {first.info.pid: "already_patched", second.info.pid: "patched"}
    assert set(second.code().values()) == {"patched"}


def test_verify_reports_which_code_each_process_runs(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    patched = spawn(backend, fx)
    run("apply")
    fresh = spawn(backend, fx)
    code, result = run("verify")
    assert code == 0 and result["changed"] is False
    got = {p["pid"]: (p["result"], p["code_before"], p["code_after"]) for p in result["processes"]}
    assert got == {
        patched.info.pid: ("patched", "patched", "patched"),
        fresh.info.pid: ("not_patched", "base", "base"),
    }


def test_plan_predicts_and_changes_nothing(backend: FakeBackend, fx: Fixture, run: Runner, state_dir: Path) -> None:
    proc = spawn(backend, fx)
    code, result = run("plan")
    assert code == 0 and result["changed"] is False
    assert result["processes"][0]["result"] == "would_patch"
    assert set(proc.code().values()) == {"base"} and not proc.blobs()
    assert "allocate_near" not in proc.log and not (state_dir / "journal").exists()


def test_a_process_of_another_build_is_left_untouched_with_a_reason(
    backend: FakeBackend, fx: Fixture, run: Runner, tmp_path: Path
) -> None:
    other = build(tmp_path / "other", stamp=0x60000000)
    proc = spawn(backend, fx, image=other.base_image)
    code, result = run("apply")
    assert code == 1 and result["ok"] is False and result["cold_patch_required"]
    (entry,) = result["processes"]
    assert entry["result"] == "refused" and "TimeDateStamp" in entry["reason"]
    assert result["reasons"] and "allocate_near" not in proc.log and not proc.blobs()


def test_a_process_already_running_the_patched_image_counts_as_patched(
    backend: FakeBackend, fx: Fixture, run: Runner
) -> None:
    proc = spawn(backend, fx, image=fx.patched_image)
    code, result = run("apply")
    assert code == 0 and result["changed"] is False
    assert result["processes"][0]["result"] == "already_patched" and not proc.blobs()


def test_a_module_file_of_another_build_on_disk_is_refused(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    fx.module_path.write_bytes(b"MZ another build")
    code, result = run("apply")
    assert code == 1 and "neither the base image" in result["processes"][0]["reason"]
    assert not proc.blobs()


def test_bytes_that_are_not_the_base_are_never_overwritten(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    entry = proc.functions["fn1"].entry
    proc.regions[0].data[entry - BASE] = 0xE8  # someone else changed fn1's first byte
    code, result = run("apply")
    assert code == 1 and result["processes"][0]["result"] == "refused"
    assert "fn1" in result["processes"][0]["reason"] and not proc.blobs()
    assert proc.run("fn0") == "base"


def test_a_jump_from_another_tool_is_refused(backend: FakeBackend, fx: Fixture, run: Runner, tmp_path: Path) -> None:
    proc = spawn(backend, fx)
    run("apply")
    # the journal is lost: the jumps can no longer be attributed to this package
    for path in (tmp_path / "state" / "journal").glob("*.json"):
        path.unlink()
    code, result = run("apply")
    assert code == 1 and "did not journal" in result["processes"][0]["reason"]
    assert len(proc.blobs()) == 1


def test_platform_refusal_is_reported_per_process(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    blocked = spawn(backend, fx)
    blocked.refusal = "dynamic code is blocked by the process mitigation policy (ACG)"
    ok = spawn(backend, fx)
    code, result = run("apply")
    assert code == 1
    got = {p["pid"]: p["result"] for p in result["processes"]}
    assert got == {blocked.info.pid: "refused", ok.info.pid: "patched"}
    assert any("ACG" in r for r in result["reasons"]) and not blocked.blobs()


def test_filters_select_processes_by_name_or_pid(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    a = spawn(backend, fx, name="AppSvc.exe")
    b = spawn(backend, fx, name="other.exe")
    c = spawn(backend, fx, name="third.exe")
    code, result = run("apply", processes={"names": ["appsvc.exe"], "pids": [c.info.windows_pid]})
    assert code == 0 and {p["pid"] for p in result["processes"]} == {a.info.pid, c.info.pid}
    assert set(b.code().values()) == {"base"}


def test_processes_without_the_module_are_not_touched(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    proc.module = type(proc.module)("other.dll", "/x/other.dll", BASE, proc.module.size)
    code, result = run("apply")
    assert code == 0 and result["processes"] == [] and result["changed"] is False


def test_cold_only_package_patches_nothing_and_asks_for_the_cold_path(
    backend: FakeBackend, fx: Fixture, run: Runner, tmp_path: Path
) -> None:
    proc = spawn(backend, fx)
    code, result = run("apply", package=str(cold_only(fx, tmp_path)))
    assert code == 1 and result["cold_patch_required"] and result["package"]["hotpatchable"] is False
    assert "changed layout" in result["processes"][0]["reason"] and not proc.blobs()


def test_cfg_targets_are_marked_valid_in_the_blob(backend: FakeBackend, tmp_path: Path, state_dir: Path) -> None:
    from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.request import parse_request
    from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.host.verbs import execute

    fx = build(tmp_path, cfg=True)
    proc = spawn(backend, fx)
    request = {"package": str(fx.package), "state_dir": str(state_dir), "allow_unsigned": True}
    code, _unused = execute(parse_request("apply", request), backend)
    assert code == 0 and proc.valid_targets == [proc.blobs()[0].start]


def test_journal_records_identity_addresses_and_original_bytes(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc = spawn(backend, fx)
    _unused, result = run("apply")
    record = json.loads(Path(result["journal"]).read_text())
    (entry,) = record["processes"]
    assert (entry["pid"], entry["start_time"], entry["state"]) == (proc.info.pid, proc.info.start_time, "applied")
    assert entry["blob_address"] == proc.blobs()[0].start and entry["unwind_table"] is not None
    assert [w["original"] for w in entry["writes"]] == ["cc" * 5] * 3 + ["4889"] * 3
    assert record["package"]["id"] == "appcore-fix" and record["format"] == 1


def test_no_process_is_stopped_when_verification_fails(backend: FakeBackend, fx: Fixture, run: Runner) -> None:
    proc: FakeProcess = spawn(backend, fx)
    proc.refusal = "protected process"
    run("apply")
    assert proc.quiesce_count == 0
