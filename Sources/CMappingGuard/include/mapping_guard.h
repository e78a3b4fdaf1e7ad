// A SIGBUS handler for memory-mapped inputs: a file truncated by someone else while it is mapped
// makes reads past its new end fault with SIGBUS. The handler names the file that shrank and exits
// with status 1 instead of dying by a signal. Written in C because a signal handler may only call
// async-signal-safe functions (fstat, write, _exit), which Swift code cannot promise.
#ifndef DSCONVERT_MAPPING_GUARD_H
#define DSCONVERT_MAPPING_GUARD_H

/// Installs the handler once (later calls do nothing).
void dsconvert_guard_install(void);
/// Records a mapping of `size` bytes at `base` of open file `fd` (path copied, truncated to 1 KiB).
void dsconvert_guard_watch(const void *base, long long size, int fd, const char *path);
/// Forgets the mapping at `base` (before it is unmapped).
void dsconvert_guard_unwatch(const void *base);

/// The work directory the handler removes before exiting (NULL: none). One at a time; the path
/// is copied.
void dsconvert_guard_set_work_directory(const char *path);

#endif
