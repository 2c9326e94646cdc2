/*
 * A stand-in for libcuda.so.1 where there is no GPU: the few driver API entry points a
 * CUDA-warm spare calls, with the CUDA Driver API's signatures and CUresult codes (0 is
 * CUDA_SUCCESS, 100 CUDA_ERROR_NO_DEVICE). Each call is appended to FAKE_CUDA_LOG (a path
 * compiled in with -DFAKE_CUDA_LOG="...") as "<pid> <call> <detail>", and a process can ask
 * how many primary contexts it retained (fake_retained), which tells a job whether it runs in
 * a warm spare. -DFAKE_CUDA_FAIL makes cuInit fail as a machine without devices does.
 * -DFAKE_CUDA_GATE="path" holds cuInit (after its log line) until that file exists, at most
 * 60 s: a warm-up a test catches midway, as a real context creation takes a while.
 * cuMemGetInfo_v2 answers for the current context's device from the file compiled in as
 * -DFAKE_CUDA_MEMORY="...": line N is "<free MiB> <total MiB>" of GPU N (the host's index, as
 * CUDA_VISIBLE_DEVICES names it); without that file it returns CUDA_ERROR_NOT_SUPPORTED (801).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;

static int initialized = 0;
static int retained = 0;
static int current = -1; /* the ordinal of the current context's device */

static void note(const char *call, const char *detail) {
    FILE *log = fopen(FAKE_CUDA_LOG, "a");
    if (log == NULL) return;
    fprintf(log, "%d %s %s\n", (int)getpid(), call, detail);
    fclose(log);
}

static int visible_count(void) {
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    if (visible == NULL) return 8;
    if (*visible == '\0') return 0;
    int count = 1;
    for (const char *c = visible; *c; c++) count += (*c == ',');
    return count;
}

CUresult cuInit(unsigned int flags) {
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    (void)flags;
    note("cuInit", visible ? visible : "(unset)");
#ifdef FAKE_CUDA_GATE
    for (int waited = 0; access(FAKE_CUDA_GATE, F_OK) != 0 && waited < 6000; waited++)
        usleep(10000);
#endif
#ifdef FAKE_CUDA_FAIL
    return 100;
#else
    initialized = 1;
    return 0;
#endif
}

CUresult cuDeviceGetCount(int *count) {
    if (!initialized) return 3; /* CUDA_ERROR_NOT_INITIALIZED */
    *count = visible_count();
    return 0;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    if (!initialized) return 3;
    if (ordinal < 0 || ordinal >= visible_count()) return 101; /* CUDA_ERROR_INVALID_DEVICE */
    *device = ordinal;
    return 0;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *context, CUdevice device) {
    char detail[32];
    if (!initialized) return 3;
    snprintf(detail, sizeof detail, "%d", device);
    note("cuDevicePrimaryCtxRetain", detail);
    *context = (CUcontext)(long)(device + 1);
    retained++;
    return 0;
}

CUresult cuCtxSetCurrent(CUcontext context) {
    if (context == NULL) return 201; /* CUDA_ERROR_INVALID_CONTEXT */
    current = (int)(long)context - 1;
    return 0;
}

/* The host's index of visible device `ordinal` (CUDA_VISIBLE_DEVICES "1,3": 1 is 3). */
static int host_index(int ordinal) {
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    if (visible == NULL) return ordinal;
    for (int seen = 0; seen < ordinal; seen++) {
        visible = strchr(visible, ',');
        if (visible == NULL) return -1;
        visible++;
    }
    return atoi(visible);
}

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    if (current < 0) return 201;
#ifdef FAKE_CUDA_MEMORY
    FILE *figures = fopen(FAKE_CUDA_MEMORY, "r");
    unsigned long free_mib = 0, total_mib = 0;
    int found = 0;
    if (figures == NULL) return 801;
    for (int index = 0; index <= host_index(current); index++)
        found = fscanf(figures, "%lu %lu", &free_mib, &total_mib) == 2;
    fclose(figures);
    if (!found) return 801;
    *free_bytes = (size_t)free_mib << 20;
    *total_bytes = (size_t)total_mib << 20;
    char detail[32];
    snprintf(detail, sizeof detail, "%d", host_index(current));
    note("cuMemGetInfo_v2", detail);
    return 0;
#else
    (void)free_bytes;
    (void)total_bytes;
    return 801; /* CUDA_ERROR_NOT_SUPPORTED */
#endif
}

int fake_retained(void) { return retained; }
