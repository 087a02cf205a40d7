/* appcore.dll: request handling of the AppSvc demo service.
 *
 * The service (appsvc.exe) reads one request line per call and hands it to appcore_handle(); everything a
 * hotpatch changes lives here, so a patch is visible from a request without touching appsvc.exe.
 */
#ifndef APPCORE_H
#define APPCORE_H

#ifdef APPCORE_BUILDING
#define APPCORE_API __declspec(dllexport)
#else
#define APPCORE_API __declspec(dllimport)
#endif

/* Handle one request line (no trailing newline). Writes a NUL-terminated answer line (no newline) into out,
 * at most outcap bytes including the NUL, and returns its length, or -1 when outcap is too small. */
APPCORE_API int appcore_handle(const char *req, char *out, int outcap);

/* The version string, e.g. "appcore 1.0.0"; it changes in the patched build. */
APPCORE_API const char *appcore_version(void);

/* The build identifier (APPCORE_BUILD_ID at compile time). */
APPCORE_API const char *appcore_build_id(void);

/* Item <index> of the catalog, or NULL when the index is refused. */
APPCORE_API const char *appcore_get_item(int index);

#endif
