/* appcore.dll: request handling of the AppSvc demo service (see appcore.h).
 *
 * Built three ways from this one file (demo/build.py):
 *   v1           the shipped build; appcore_get_item() checks the index against the whole catalog instead of
 *                the item table, so GET 5..7 return the API keys stored right after the items (a real leak that
 *                never crashes).
 *   v2           -DAPPCORE_V2: the fix (bounds check on the item table) and a new version string. Only the
 *                code of appcore_get_item() and appcore_version() differs (data is identical), so v1 -> v2 is
 *                a hotpatch.
 *   v1-mismatch  v1 behaviour, another APPCORE_BUILD_ID: a different base image, so a v1 -> v2 package must
 *                refuse it.
 *
 * HOTPATCHABLE puts 32 bytes of CC padding before each entry and an 8-byte first instruction; noipa keeps gcc
 * from inlining or cloning these functions, so each patched function stays one symbol at one RVA.
 */
#define APPCORE_BUILDING
#include "appcore.h"

#include <stdlib.h>
#include <string.h>

#define HOTPATCHABLE __attribute__((ms_hook_prologue, noipa))

#ifndef APPCORE_BUILD_ID
#define APPCORE_BUILD_ID "demo-1"
#endif

#define N_ITEMS 5
#define N_KEYS 3

/* The items and the secrets share one object, as a real service keeps its tables in one struct: an index past
 * the items reads the keys, never unmapped memory. Same layout in every build (writable data never changes). */
struct catalog {
    const char *items[N_ITEMS];
    const char *api_keys[N_KEYS];
};

static const struct catalog g_catalog = {
    {"apple", "banana", "cherry", "damson", "elder"},
    {"APIKEY-7f3a9c1e-prod-billing", "APIKEY-52d0b8aa-prod-ledger", "APIKEY-c41e77f0-prod-admin"},
};

/* Every version string is in every build (this table keeps them), so v1 and v2 have the same read-only data
 * and differ only in which one appcore_version's code points at: a hotpatch changes the VERSION answer. */
static const char g_version_strings[2][16] = {"appcore 1.0.0", "appcore 1.0.1"};

HOTPATCHABLE const char *appcore_version(void)
{
#ifdef APPCORE_V2
    return g_version_strings[1];
#else
    return g_version_strings[0];
#endif
}

HOTPATCHABLE const char *appcore_build_id(void)
{
    return APPCORE_BUILD_ID;
}

HOTPATCHABLE const char *appcore_get_item(int index)
{
#ifdef APPCORE_V2
    if (index < 0 || index >= N_ITEMS)
        return NULL;
#else
    /* The bug: the bound is the whole catalog, not the item table. */
    if (index < 0 || index >= (int)(sizeof(g_catalog) / sizeof(g_catalog.items[0])))
        return NULL;
#endif
    return g_catalog.items[index];
}

/* Requests handled since the process started: a hotpatch keeps it, a restart resets it. */
static volatile long g_requests;

static int reply(char *out, int outcap, const char *a, const char *b)
{
    size_t la = strlen(a), lb = b ? strlen(b) : 0;
    if (outcap <= 0 || la + lb + 1 > (size_t)outcap)
        return -1;
    memcpy(out, a, la);
    if (b)
        memcpy(out + la, b, lb);
    out[la + lb] = '\0';
    return (int)(la + lb);
}

HOTPATCHABLE int appcore_handle_get(const char *arg, char *out, int outcap)
{
    char *end = NULL;
    long index = strtol(arg, &end, 10);
    const char *item;
    if (end == arg || *end != '\0' || index < -1000000 || index > 1000000)
        return reply(out, outcap, "ERR bad index", NULL);
    item = appcore_get_item((int)index);
    if (!item)
        return reply(out, outcap, "ERR index out of range", NULL);
    return reply(out, outcap, item, NULL);
}

HOTPATCHABLE int appcore_handle(const char *req, char *out, int outcap)
{
    __atomic_add_fetch(&g_requests, 1, __ATOMIC_RELAXED);
    if (strcmp(req, "PING") == 0)
        return reply(out, outcap, "PONG", NULL);
    if (strcmp(req, "VERSION") == 0)
        return reply(out, outcap, appcore_version(), NULL);
    if (strcmp(req, "BUILD") == 0)
        return reply(out, outcap, appcore_build_id(), NULL);
    if (strcmp(req, "STATS") == 0) {
        char num[24];
        int i = (int)sizeof(num) - 1;
        unsigned long n = (unsigned long)__atomic_load_n(&g_requests, __ATOMIC_RELAXED);
        num[i] = '\0';
        do {
            num[--i] = (char)('0' + n % 10);
            n /= 10;
        } while (n && i > 0);
        return reply(out, outcap, "requests ", num + i);
    }
    if (strncmp(req, "GET ", 4) == 0)
        return appcore_handle_get(req + 4, out, outcap);
    return reply(out, outcap, "ERR unknown request", NULL);
}
