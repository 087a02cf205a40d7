/* appsvc.exe: the AppSvc demo service, a multi-threaded TCP line server on 127.0.0.1.
 *
 * Usage: appsvc.exe <port>
 * One thread accepts; each connection gets its own thread, which reads request lines ("\n" or "\r\n"
 * terminated) and answers each with one line computed by appcore.dll. A heartbeat thread calls into appcore
 * as well, so a hotpatch always meets more than one thread to quiesce.
 */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "appcore.h"

#define LINE_MAX_LEN 1024

static DWORD WINAPI heartbeat_thread(LPVOID arg)
{
    char out[128];
    (void)arg;
    for (;;) {
        appcore_handle("PING", out, (int)sizeof(out));
        Sleep(200);
    }
    return 0;
}

static int send_all(SOCKET s, const char *buf, int len)
{
    while (len > 0) {
        int n = send(s, buf, len, 0);
        if (n <= 0)
            return -1;
        buf += n;
        len -= n;
    }
    return 0;
}

static DWORD WINAPI connection_thread(LPVOID arg)
{
    SOCKET s = (SOCKET)(ULONG_PTR)arg;
    char in[LINE_MAX_LEN + 1];
    char out[LINE_MAX_LEN + 2];
    int used = 0;

    for (;;) {
        int n = recv(s, in + used, LINE_MAX_LEN - used, 0);
        char *start = in, *nl;
        if (n <= 0)
            break;
        used += n;
        in[used] = '\0';
        while ((nl = memchr(start, '\n', (size_t)(in + used - start))) != NULL) {
            int len;
            *nl = '\0';
            if (nl > start && nl[-1] == '\r')
                nl[-1] = '\0';
            len = appcore_handle(start, out, LINE_MAX_LEN);
            if (len < 0)
                len = (int)strlen(strcpy(out, "ERR answer too long"));
            out[len++] = '\n';
            if (send_all(s, out, len) < 0)
                goto done;
            start = nl + 1;
        }
        used = (int)(in + used - start);
        memmove(in, start, (size_t)used);
        if (used == LINE_MAX_LEN) {
            static const char too_long[] = "ERR request too long\n";
            send_all(s, too_long, (int)sizeof(too_long) - 1);
            break;
        }
    }
done:
    shutdown(s, SD_BOTH);
    closesocket(s);
    return 0;
}

int main(int argc, char **argv)
{
    WSADATA wsa;
    SOCKET ls;
    struct sockaddr_in addr;
    int port, tries, one = 1;
    HANDLE hb;

    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2 || (port = atoi(argv[1])) <= 0 || port > 65535) {
        fprintf(stderr, "usage: appsvc.exe <port>\n");
        return 2;
    }
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) {
        fprintf(stderr, "appsvc: WSAStartup failed\n");
        return 1;
    }
    ls = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    if (ls == INVALID_SOCKET) {
        fprintf(stderr, "appsvc: socket failed: %d\n", WSAGetLastError());
        return 1;
    }
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, (const char *)&one, sizeof(one));
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* A restart may race the previous instance's socket teardown: retry for up to 10 s. */
    for (tries = 0; bind(ls, (struct sockaddr *)&addr, sizeof(addr)) == SOCKET_ERROR; tries++) {
        if (tries >= 100) {
            fprintf(stderr, "appsvc: bind 127.0.0.1:%d failed: %d\n", port, WSAGetLastError());
            return 1;
        }
        Sleep(100);
    }
    if (listen(ls, SOMAXCONN) == SOCKET_ERROR) {
        fprintf(stderr, "appsvc: listen failed: %d\n", WSAGetLastError());
        return 1;
    }
    hb = CreateThread(NULL, 0, heartbeat_thread, NULL, 0, NULL);
    if (hb)
        CloseHandle(hb);
    printf("appsvc: listening on 127.0.0.1:%d, %s (%s), Windows PID %lu\n", port, appcore_version(), appcore_build_id(),
           (unsigned long)GetCurrentProcessId());

    for (;;) {
        SOCKET c = accept(ls, NULL, NULL);
        HANDLE t;
        if (c == INVALID_SOCKET) {
            Sleep(10);
            continue;
        }
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, (const char *)&one, sizeof(one));
        t = CreateThread(NULL, 64 * 1024, connection_thread, (LPVOID)(ULONG_PTR)c, STACK_SIZE_PARAM_IS_A_RESERVATION, NULL);
        if (t)
            CloseHandle(t);
        else
            closesocket(c);
    }
}
