/*
 * A stand-in for libcuda.so.1 where there is no GPU: the few driver API entry points a
 * CUDA-warm spare calls, with the CUDA Driver API's signatures and CUresult codes (0 is
 * CUDA_SUCCESS, 100 CUDA_ERROR_NO_DEVICE). Each call is appended to FAKE_CUDA_LOG (a path
 * compiled in with -DFAKE_CUDA_LOG="...") as "<pid> <call> <detail>", and a process can ask
 * how many primary contexts it retained (fake_retained), which tells a job whether it runs in
 * a warm spare. -DFAKE_CUDA_FAIL makes cuInit fail as a machine without devices does.
 * -DFAKE_CUDA_GATE="path" holds cuInit (after its log line) until that file exists, at most
 * 60 s: a warm-up a test catches midway, as a real context creation takes a while.
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
    return context == NULL ? 201 : 0; /* CUDA_ERROR_INVALID_CONTEXT */
}

int fake_retained(void) { return retained; }
