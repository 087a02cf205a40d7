/* The Windows backend's freeze, in C, to check under Wine the operating-system behaviour the backend relies on.
 * freezer <pid> <counters address> <mode>; every mode connects, sets detach-on-exit (not in die-kill), attaches
 * and holds the event of the thread the system injects (its creation, reported with start DbgUiRemoteBreakin;
 * else its breakpoint), answering the other events as the backend does (file handles closed, the target's own
 * exceptions passed back), then checks the counters stand still; prints "held create" or "held breakpoint" and
 * "frozen <0|1>":
 *   cycles   five freezes in a row, each released as the engine's retries do (a held breakpoint is continued,
 *            a held creation is not; then detach); prints "pause_us <n>" (attach to detach) for each
 *   die      the process ends holding the event, never continued nor detached: the engine's death
 *   die-kill as die, without detach-on-exit (the default, kill on exit): the control case
 *   hang     holds the event and waits: the test kills it from outside, as a WinRM job object does */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

NTSTATUS NTAPI DbgUiConnectToDbg(void);

static LONG64 total(HANDLE process, void *address)
{
    LONG64 values[2] = {0, 0};
    SIZE_T done = 0;
    if (!ReadProcessMemory(process, address, values, sizeof(values), &done))
        return -1;
    return values[0] + values[1];
}

/* Attach and answer events until the injected thread is reported, which is left pending; 0 on success. */
static int freeze(DWORD pid, DEBUG_EVENT *event)
{
    HMODULE ntdll = GetModuleHandleA("ntdll.dll");
    void *breakin_start = (void *)GetProcAddress(ntdll, "DbgUiRemoteBreakin");
    void *breakin_at = (void *)GetProcAddress(ntdll, "DbgBreakPoint");

    if (!DebugActiveProcess(pid)) {
        printf("error DebugActiveProcess %lu\n", GetLastError());
        return 1;
    }
    for (;;) {
        DWORD status = DBG_CONTINUE;
        if (!WaitForDebugEvent(event, 5000)) {
            printf("error WaitForDebugEvent %lu\n", GetLastError());
            DebugActiveProcessStop(pid);
            return 1;
        }
        switch (event->dwDebugEventCode) {
        case CREATE_PROCESS_DEBUG_EVENT:
            if (event->u.CreateProcessInfo.hFile)
                CloseHandle(event->u.CreateProcessInfo.hFile);
            break;
        case CREATE_THREAD_DEBUG_EVENT:
            if ((void *)event->u.CreateThread.lpStartAddress == breakin_start) {
                printf("held create\n");
                return 0;
            }
            break;
        case LOAD_DLL_DEBUG_EVENT:
            if (event->u.LoadDll.hFile)
                CloseHandle(event->u.LoadDll.hFile);
            break;
        case EXCEPTION_DEBUG_EVENT:
            if (event->u.Exception.ExceptionRecord.ExceptionCode == EXCEPTION_BREAKPOINT &&
                event->u.Exception.ExceptionRecord.ExceptionAddress == breakin_at) {
                printf("held breakpoint\n");
                return 0;
            }
            status = DBG_EXCEPTION_NOT_HANDLED;
            break;
        }
        if (!ContinueDebugEvent(event->dwProcessId, event->dwThreadId, status)) {
            printf("error ContinueDebugEvent %lu\n", GetLastError());
            return 1;
        }
    }
}

int main(int argc, char **argv)
{
    DWORD pid;
    void *counters;
    const char *mode;
    DEBUG_EVENT event;
    LARGE_INTEGER frequency, begin, end;
    HANDLE process;
    LONG64 before;
    int cycle;

    if (argc != 4)
        return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    pid = strtoul(argv[1], NULL, 0);
    counters = (void *)(ULONG_PTR)_strtoui64(argv[2], NULL, 0);
    mode = argv[3];
    process = OpenProcess(PROCESS_VM_READ | PROCESS_QUERY_INFORMATION, FALSE, pid);
    QueryPerformanceFrequency(&frequency);
    if (!process || DbgUiConnectToDbg() < 0) {
        printf("error connect %lu\n", GetLastError());
        return 3;
    }
    if (strcmp(mode, "die-kill") && !DebugSetProcessKillOnExit(FALSE)) {
        printf("error DebugSetProcessKillOnExit %lu\n", GetLastError());
        return 3;
    }
    for (cycle = 0; cycle < (strcmp(mode, "cycles") ? 1 : 5); cycle++) {
        QueryPerformanceCounter(&begin);
        if (freeze(pid, &event))
            return 4;
        before = total(process, counters);
        Sleep(20);
        printf("frozen %d\n", before >= 0 && before == total(process, counters));
        if (strcmp(mode, "cycles")) {
            printf("holding\n");
            if (!strcmp(mode, "hang"))
                Sleep(INFINITE);
            ExitProcess(0);
        }
        if ((event.dwDebugEventCode == EXCEPTION_DEBUG_EVENT &&
             !ContinueDebugEvent(event.dwProcessId, event.dwThreadId, DBG_CONTINUE)) ||
            !DebugActiveProcessStop(pid)) {
            printf("error release %lu\n", GetLastError());
            return 5;
        }
        QueryPerformanceCounter(&end);
        printf("pause_us %lld\n", (end.QuadPart - begin.QuadPart) * 1000000 / frequency.QuadPart);
        Sleep(20);
    }
    return 0;
}
