/* A busy Windows program for the debug-API freeze test: two threads count without pause.
 * Prints "ready <windows pid> <address of the counters>" and then, for each line read on stdin, the sum of the
 * counters; "quit" ends it. The counters are read by the test's debugger through ReadProcessMemory too. */
#include <windows.h>
#include <stdio.h>
#include <string.h>

static volatile LONG64 counters[2];

static DWORD WINAPI spin(void *arg)
{
    volatile LONG64 *counter = arg;
    for (;;)
        (*counter)++;
    return 0;
}

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IONBF, 0);
    CreateThread(NULL, 0, spin, (void *)&counters[0], 0, NULL);
    CreateThread(NULL, 0, spin, (void *)&counters[1], 0, NULL);
    printf("ready %lu %p\n", GetCurrentProcessId(), (void *)counters);
    while (fgets(line, sizeof(line), stdin)) {
        if (!strncmp(line, "quit", 4))
            break;
        printf("%lld\n", counters[0] + counters[1]);
    }
    return 0;
}
