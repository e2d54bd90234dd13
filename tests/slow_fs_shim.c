/* slow_fs_shim: a fault-injection library the process tests LD_PRELOAD into
 * trainer_child. It slows the calls that delete and rename files when a path
 * they are given contains REMAT_TEST_SLOW_FS (a plain substring), so that a
 * SIGKILL sent while the test sees the window lands inside it. Each matching
 * call sleeps REMAT_TEST_SLOW_FS_MS milliseconds (default 200) before it is
 * made. Without REMAT_TEST_SLOW_FS the calls pass straight through.
 *
 * glibc's remove() calls unlink and rmdir inside the library, where they are
 * not interposed, so remove() is wrapped too. */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void slow_down(const char* a, const char* b) {
  const char* pattern = getenv("REMAT_TEST_SLOW_FS");
  if (pattern == NULL || pattern[0] == '\0') return;
  if (!((a != NULL && strstr(a, pattern) != NULL) || (b != NULL && strstr(b, pattern) != NULL))) {
    return;
  }
  const char* ms_text = getenv("REMAT_TEST_SLOW_FS_MS");
  const long ms = ms_text != NULL ? atol(ms_text) : 200;
  struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&pause, &pause) != 0) {
  }
}

#define NEXT(name, type) ((type)dlsym(RTLD_NEXT, name))

int unlink(const char* path) {
  slow_down(path, NULL);
  return NEXT("unlink", int (*)(const char*))(path);
}

int unlinkat(int dirfd, const char* path, int flags) {
  slow_down(path, NULL);
  return NEXT("unlinkat", int (*)(int, const char*, int))(dirfd, path, flags);
}

int rmdir(const char* path) {
  slow_down(path, NULL);
  return NEXT("rmdir", int (*)(const char*))(path);
}

int remove(const char* path) {
  slow_down(path, NULL);
  return NEXT("remove", int (*)(const char*))(path);
}

int rename(const char* from, const char* to) {
  slow_down(from, to);
  return NEXT("rename", int (*)(const char*, const char*))(from, to);
}

int renameat(int from_dir, const char* from, int to_dir, const char* to) {
  slow_down(from, to);
  return NEXT("renameat", int (*)(int, const char*, int, const char*))(from_dir, from, to_dir, to);
}
